//! The inference engine: tract plans loaded once per activation, run on a dedicated thread
//! pool fed by a bounded queue, so inference never blocks the async reactor.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use fleetml_shared::bundle::{DType, Dim, SelfTest, TensorData, TensorSpec, TensorValues};
use tokio::sync::{mpsc, oneshot};
use tract_onnx::prelude::*;

/// Requests waiting for a worker. When full, callers get `InferenceError::Overloaded`
/// (HTTP 503) at once instead of queueing without bound.
const INFERENCE_QUEUE_CAPACITY: usize = 1024;
/// Plans kept per model for distinct input shapes (batch sizes); the oldest is dropped.
const MAX_PLANS_PER_MODEL: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum InferenceError {
    #[error("unknown input `{0}`")]
    UnknownInput(String),
    #[error("missing input `{0}`")]
    MissingInput(String),
    #[error("input `{name}` has datatype {got}, the model expects {expected}")]
    WrongDatatype { name: String, expected: &'static str, got: &'static str },
    #[error("input `{name}` has shape {got:?}, the model expects {expected:?} (-1: any size)")]
    WrongShape { name: String, expected: Vec<i64>, got: Vec<u64> },
    #[error("input `{name}` has {got} values, its shape {shape:?} needs {expected}")]
    WrongLength { name: String, shape: Vec<u64>, expected: usize, got: usize },
    #[error("input `{name}`: shape {shape:?} has more elements than can be addressed")]
    TooManyElements { name: String, shape: Vec<u64> },
    #[error("the inference queue is full")]
    Overloaded,
    #[error("the inference engine is shut down")]
    ShutDown,
    #[error("model failed to load: {0}")]
    Load(String),
    #[error("inference failed: {0}")]
    Runtime(String),
}

impl InferenceError {
    /// Errors caused by the request rather than the model or the device.
    pub fn is_client_error(&self) -> bool {
        matches!(
            self,
            InferenceError::UnknownInput(_)
                | InferenceError::MissingInput(_)
                | InferenceError::WrongDatatype { .. }
                | InferenceError::WrongShape { .. }
                | InferenceError::WrongLength { .. }
                | InferenceError::TooManyElements { .. }
        )
    }
}

type Plan = Arc<TypedRunnableModel>;

/// One model version, loaded and ready to run.
pub struct LoadedModel {
    pub model: String,
    pub version: u64,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    template: InferenceModel,
    plans: Mutex<Vec<(Vec<Vec<usize>>, Plan)>>,
}

impl std::fmt::Debug for LoadedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LoadedModel({}@{})", self.model, self.version)
    }
}

fn datum_type(dtype: DType) -> DatumType {
    match dtype {
        DType::F32 => f32::datum_type(),
        DType::I64 => i64::datum_type(),
    }
}

impl LoadedModel {
    /// Parses the ONNX file and builds the plan for the self-test's shapes.
    pub fn load(path: &Path, model: &str, version: u64, inputs: Vec<TensorSpec>, outputs: Vec<TensorSpec>) -> Result<Self, InferenceError> {
        let template = tract_onnx::onnx().model_for_path(path).map_err(|error| InferenceError::Load(format!("{error:#}")))?;
        if template.input_outlets().map_err(|error| InferenceError::Load(error.to_string()))?.len() != inputs.len() {
            return Err(InferenceError::Load("the graph's inputs differ from the manifest's".into()));
        }
        Ok(LoadedModel { model: model.to_string(), version, inputs, outputs, template, plans: Mutex::new(Vec::new()) })
    }

    fn plan_for(&self, shapes: &[Vec<usize>]) -> Result<Plan, InferenceError> {
        if let Ok(plans) = self.plans.lock()
            && let Some((_, plan)) = plans.iter().find(|(key, _)| key == shapes)
        {
            return Ok(plan.clone());
        }
        let mut model = self.template.clone();
        for (input_idx, (spec, shape)) in self.inputs.iter().zip(shapes).enumerate() {
            let fact = InferenceFact::dt_shape(datum_type(spec.dtype), shape.as_slice());
            model = model.with_input_fact(input_idx, fact).map_err(|error| InferenceError::Load(format!("{error:#}")))?;
        }
        let plan = model
            .into_optimized()
            .and_then(|optimized| optimized.into_runnable())
            .map_err(|error| InferenceError::Load(format!("{error:#}")))?;
        if let Ok(mut plans) = self.plans.lock() {
            if plans.len() >= MAX_PLANS_PER_MODEL {
                plans.remove(0);
            }
            plans.push((shapes.to_vec(), plan.clone()));
        }
        Ok(plan)
    }

    /// Checks requests against the model's schema and orders them as the graph wants.
    pub fn validate<'a>(&self, inputs: &'a [TensorData]) -> Result<Vec<&'a TensorData>, InferenceError> {
        for input in inputs {
            if !self.inputs.iter().any(|spec| spec.name == input.name) {
                return Err(InferenceError::UnknownInput(input.name.clone()));
            }
        }
        let mut ordered = Vec::with_capacity(self.inputs.len());
        for spec in &self.inputs {
            let input =
                inputs.iter().find(|input| input.name == spec.name).ok_or_else(|| InferenceError::MissingInput(spec.name.clone()))?;
            if input.values.dtype() != spec.dtype {
                return Err(InferenceError::WrongDatatype {
                    name: spec.name.clone(),
                    expected: spec.dtype.oip_name(),
                    got: input.values.dtype().oip_name(),
                });
            }
            let shape_fits = input.shape.len() == spec.shape.len()
                && input.shape.iter().zip(&spec.shape).all(|(got, want)| match want {
                    Dim::Fixed(size) => got == size,
                    Dim::Dynamic => *got > 0,
                });
            if !shape_fits {
                return Err(InferenceError::WrongShape { name: spec.name.clone(), expected: spec.oip_shape(), got: input.shape.clone() });
            }
            let expected_len = match crate::api::element_count(&input.shape) {
                Some(count) if !input.shape.contains(&0) => count,
                Some(_) => 0,
                None => return Err(InferenceError::TooManyElements { name: spec.name.clone(), shape: input.shape.clone() }),
            };
            if input.values.len() != expected_len {
                return Err(InferenceError::WrongLength {
                    name: spec.name.clone(),
                    shape: input.shape.clone(),
                    expected: expected_len,
                    got: input.values.len(),
                });
            }
            ordered.push(input);
        }
        Ok(ordered)
    }

    /// Runs the model on the calling thread (a pool worker, or the installer's thread).
    pub fn run_blocking(&self, inputs: &[TensorData]) -> Result<Vec<TensorData>, InferenceError> {
        let ordered = self.validate(inputs)?;
        let shapes: Vec<Vec<usize>> = ordered.iter().map(|input| input.shape.iter().map(|&dim| dim as usize).collect()).collect();
        let plan = self.plan_for(&shapes)?;
        let mut tensors: TVec<TValue> = TVec::new();
        for (input, shape) in ordered.iter().zip(&shapes) {
            let tensor = match &input.values {
                TensorValues::F32(values) => Tensor::from_shape(shape, values),
                TensorValues::I64(values) => Tensor::from_shape(shape, values),
            }
            .map_err(|error| InferenceError::Runtime(error.to_string()))?;
            tensors.push(tensor.into_tvalue());
        }
        let results = plan.run(tensors).map_err(|error| InferenceError::Runtime(format!("{error:#}")))?;
        let mut outputs = Vec::with_capacity(results.len());
        for (output_idx, value) in results.iter().enumerate() {
            let spec = self.outputs.get(output_idx);
            let name = spec.map(|spec| spec.name.clone()).unwrap_or_else(|| format!("output_{output_idx}"));
            outputs.push(tensor_data(name, value, spec.map(|spec| spec.dtype))?);
        }
        Ok(outputs)
    }

    /// Runs the self-test recorded at push: outputs finite and within tolerance, and the
    /// timed run (after a warm-up) within the latency budget. Returns the timed run in ms.
    pub fn self_test(&self, self_test: &SelfTest) -> Result<f32, String> {
        self.run_blocking(&self_test.inputs).map_err(|error| format!("warm-up run: {error}"))?;
        let started = Instant::now();
        let outputs = self.run_blocking(&self_test.inputs).map_err(|error| format!("self-test run: {error}"))?;
        let elapsed_ms = started.elapsed().as_secs_f32() * 1000.0;
        for expected in &self_test.expected_outputs {
            let got =
                outputs.iter().find(|output| output.name == expected.name).ok_or_else(|| format!("output `{}` missing", expected.name))?;
            compare_outputs(got, expected, self_test.tolerance)?;
        }
        if elapsed_ms > self_test.latency_budget_ms as f32 {
            return Err(format!("took {elapsed_ms:.1} ms, over the {} ms budget", self_test.latency_budget_ms));
        }
        Ok(elapsed_ms)
    }
}

fn compare_outputs(got: &TensorData, expected: &TensorData, tolerance: f32) -> Result<(), String> {
    if got.shape != expected.shape {
        return Err(format!("output `{}` has shape {:?}, expected {:?}", got.name, got.shape, expected.shape));
    }
    match (&got.values, &expected.values) {
        (TensorValues::F32(got_values), TensorValues::F32(expected_values)) => {
            for (element_idx, (value, want)) in got_values.iter().zip(expected_values).enumerate() {
                if !value.is_finite() {
                    return Err(format!("output `{}`[{element_idx}] is not finite ({value})", got.name));
                }
                if (value - want).abs() > tolerance * (1.0 + want.abs()) {
                    return Err(format!("output `{}`[{element_idx}] is {value}, expected {want} within {tolerance}", got.name));
                }
            }
            Ok(())
        }
        (TensorValues::I64(got_values), TensorValues::I64(expected_values)) => {
            match got_values.iter().zip(expected_values).position(|(value, want)| value != want) {
                Some(element_idx) => Err(format!(
                    "output `{}`[{element_idx}] is {}, expected {}",
                    got.name, got_values[element_idx], expected_values[element_idx]
                )),
                None => Ok(()),
            }
        }
        _ => Err(format!("output `{}` has another datatype than recorded", got.name)),
    }
}

/// Reads an output in the datatype the model declares for it (tract may compute, say, a
/// label as another type than the graph's INT64); undeclared outputs keep theirs, or FP32.
fn tensor_data(name: String, value: &TValue, declared: Option<DType>) -> Result<TensorData, InferenceError> {
    let shape: Vec<u64> = value.shape().iter().map(|&dim| dim as u64).collect();
    let runtime = |error: TractError| InferenceError::Runtime(error.to_string());
    let dtype = declared.unwrap_or(if value.datum_type() == DatumType::I64 { DType::I64 } else { DType::F32 });
    let values = match dtype {
        DType::F32 => TensorValues::F32(
            value.cast_to::<f32>().map_err(runtime)?.try_as_plain_ram().map_err(runtime)?.as_slice::<f32>().map_err(runtime)?.to_vec(),
        ),
        DType::I64 => TensorValues::I64(
            value.cast_to::<i64>().map_err(runtime)?.try_as_plain_ram().map_err(runtime)?.as_slice::<i64>().map_err(runtime)?.to_vec(),
        ),
    };
    Ok(TensorData { name, shape, values })
}

type Job = Box<dyn FnOnce() + Send>;

/// A fixed set of named worker threads fed by one bounded queue; cheap to clone.
#[derive(Clone)]
pub struct InferencePool {
    sender: mpsc::Sender<Job>,
}

impl InferencePool {
    pub fn start(n_threads: usize) -> std::io::Result<Self> {
        let (sender, receiver) = mpsc::channel::<Job>(INFERENCE_QUEUE_CAPACITY);
        let receiver = Arc::new(Mutex::new(receiver));
        for thread_idx in 0..n_threads.max(1) {
            let receiver = receiver.clone();
            std::thread::Builder::new().name(format!("inference-{thread_idx}")).spawn(move || {
                loop {
                    let job = match receiver.lock() {
                        Ok(mut receiver) => receiver.blocking_recv(),
                        Err(_) => None,
                    };
                    match job {
                        Some(job) => job(),
                        None => break,
                    }
                }
            })?;
        }
        Ok(InferencePool { sender })
    }

    pub async fn run(&self, model: Arc<LoadedModel>, inputs: Vec<TensorData>) -> Result<Vec<TensorData>, InferenceError> {
        let (reply, answer) = oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = reply.send(model.run_blocking(&inputs));
        });
        self.sender.try_send(job).map_err(|error| match error {
            mpsc::error::TrySendError::Full(_) => InferenceError::Overloaded,
            mpsc::error::TrySendError::Closed(_) => InferenceError::ShutDown,
        })?;
        answer.await.map_err(|_| InferenceError::ShutDown)?
    }
}
