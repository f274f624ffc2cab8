//! The model registry's rules: what makes an ONNX file acceptable (tract loads it), its
//! input/output schema, the self-test recorded at push, and the signed bundle built from it.

use std::collections::HashSet;
use std::time::Instant;

use fleetml_shared::bundle::{
    DEFAULT_CHUNK_SIZE, DType, Dim, FileEntry, MANIFEST_FORMAT_VERSION, Manifest, ROLE_MODEL, ROLE_PROFILE, SelfTest, SignedManifest,
    TensorData, TensorSpec, TensorValues, chunk_hashes, sha256, write_bundle_file,
};
use fleetml_shared::drift::Side;
use fleetml_shared::drift::profile::{Profile, Reference};
use fleetml_shared::signing::SigningKeyPair;
use prost::Message;
use serde::{Deserialize, Serialize};
use tract_onnx::pb;
use tract_onnx::pb::tensor_shape_proto::dimension;
use tract_onnx::prelude::*;

/// Default relative tolerance of the self-test: devices of other CPUs must agree this well.
pub const DEFAULT_SELF_TEST_TOLERANCE: f32 = 1e-4;
/// The smallest self-test latency budget: devices are often far slower than the plane.
pub const MIN_LATENCY_BUDGET_MS: u32 = 2_000;
/// Half a message: room for the desired state around the manifest.
pub const MAX_MANIFEST_BYTES: usize = fleetml_shared::protocol::MAX_MESSAGE_BYTES / 2;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("not an ONNX model: {0}")]
    NotOnnx(String),
    #[error("the ONNX graph is not supported: {0}")]
    Unsupported(String),
    #[error("tract cannot load this model: {0}")]
    TractLoad(String),
    #[error("the model fails on its self-test input: {0}")]
    SelfTest(String),
    #[error("building the bundle: {0}")]
    Bundle(#[from] fleetml_shared::bundle::BundleError),
    #[error("the reference profile is refused: {0}")]
    Profile(String),
}

/// Checks that every feature of a profile reads a tensor the model has, at a position it has.
pub fn check_profile(profile: &Profile, inputs: &[TensorSpec], outputs: &[TensorSpec]) -> Result<(), ModelError> {
    for feature in profile.features() {
        let tensors = match feature.side {
            Side::Input => inputs,
            Side::Output => outputs,
        };
        let side = match feature.side {
            Side::Input => "input",
            Side::Output => "output",
        };
        let Some(spec) = tensors.iter().find(|spec| spec.name == feature.tensor) else {
            let names: Vec<&str> = tensors.iter().map(|spec| spec.name.as_str()).collect();
            return Err(ModelError::Profile(format!(
                "feature `{}` reads {side} `{}`, but the model's {side}s are {names:?}",
                feature.name, feature.tensor
            )));
        };
        // Elements per row: the product of the fixed dimensions after the batch.
        let row_len: Option<u64> = spec
            .shape
            .iter()
            .skip(1)
            .map(|dim| match dim {
                Dim::Fixed(size) => Some(*size),
                Dim::Dynamic => None,
            })
            .product();
        let (position, bound, what) = match &feature.reference {
            Reference::Numeric(reference) => (reference.index as u64, row_len, "index"),
            Reference::Categorical(reference) => (reference.index as u64, row_len, "index"),
            Reference::Channels(reference) => (reference.axis as u64, Some(spec.shape.len() as u64), "axis"),
        };
        if let Some(bound) = bound
            && position >= bound
        {
            return Err(ModelError::Profile(format!(
                "feature `{}` reads {what} {position} of {side} `{}`, which has {bound}",
                feature.name, feature.tensor
            )));
        }
    }
    Ok(())
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TensorSchema {
    pub name: String,
    pub datatype: String,
    /// -1 for a dimension left open (the batch).
    pub shape: Vec<i64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelSchema {
    pub inputs: Vec<TensorSchema>,
    pub outputs: Vec<TensorSchema>,
}

impl ModelSchema {
    fn from_specs(inputs: &[TensorSpec], outputs: &[TensorSpec]) -> Self {
        let describe = |specs: &[TensorSpec]| {
            specs
                .iter()
                .map(|spec| TensorSchema { name: spec.name.clone(), datatype: spec.dtype.oip_name().to_string(), shape: spec.oip_shape() })
                .collect()
        };
        ModelSchema { inputs: describe(inputs), outputs: describe(outputs) }
    }
}

#[derive(Clone, Debug)]
pub struct BundleOptions {
    pub model: String,
    pub version: u64,
    pub expires_in_ms: Option<u64>,
    pub latency_budget_ms: Option<u32>,
    pub tolerance: f32,
    /// A reference profile (JSON, `drift::profile`) to attach for drift monitoring.
    pub profile: Option<Vec<u8>>,
}

pub struct BuiltBundle {
    pub signed_manifest: SignedManifest,
    pub manifest: Manifest,
    pub schema: ModelSchema,
    /// The whole bundle file: header and payload.
    pub file_bytes: Vec<u8>,
    pub self_test_ms: f32,
}

fn tensor_specs(values: &[pb::ValueInfoProto], skip: &HashSet<&str>) -> Result<Vec<TensorSpec>, ModelError> {
    let mut specs = Vec::new();
    for value in values.iter().filter(|value| !skip.contains(value.name.as_str())) {
        let Some(pb::type_proto::Value::TensorType(tensor)) = value.r#type.as_ref().and_then(|type_proto| type_proto.value.as_ref()) else {
            return Err(ModelError::Unsupported(format!("`{}` is not a tensor (sequences and maps are not served)", value.name)));
        };
        let dtype = match tensor.elem_type {
            1 => DType::F32,
            7 => DType::I64,
            other => {
                return Err(ModelError::Unsupported(format!("`{}` has ONNX element type {other}; FP32 and INT64 are served", value.name)));
            }
        };
        let shape = match &tensor.shape {
            Some(shape) => shape
                .dim
                .iter()
                .map(|dim| match dim.value {
                    Some(dimension::Value::DimValue(size)) if size > 0 => Dim::Fixed(size as u64),
                    _ => Dim::Dynamic,
                })
                .collect(),
            None => {
                return Err(ModelError::Unsupported(format!("`{}` has no declared shape", value.name)));
            }
        };
        specs.push(TensorSpec { name: value.name.clone(), dtype, shape });
    }
    Ok(specs)
}

/// Reads the graph's declared inputs (without initializers) and outputs.
pub fn inspect(onnx: &[u8]) -> Result<(Vec<TensorSpec>, Vec<TensorSpec>), ModelError> {
    let (inputs, outputs) = inspect_parts(onnx)?;
    Ok((inputs, outputs?))
}

/// Inputs, and outputs or why they cannot be served.
type InspectedParts = (Vec<TensorSpec>, Result<Vec<TensorSpec>, ModelError>);

/// Like `inspect`, but an unservable output is returned as its own error, so that tract can
/// be asked first and give its own reason.
fn inspect_parts(onnx: &[u8]) -> Result<InspectedParts, ModelError> {
    let model = pb::ModelProto::decode(onnx).map_err(|error| ModelError::NotOnnx(error.to_string()))?;
    let graph = model.graph.as_ref().ok_or_else(|| ModelError::NotOnnx("the file has no graph".into()))?;
    if graph.node.is_empty() {
        return Err(ModelError::NotOnnx("the graph has no nodes".into()));
    }
    let initializers: HashSet<&str> = graph.initializer.iter().map(|tensor| tensor.name.as_str()).collect();
    let inputs = tensor_specs(&graph.input, &initializers)?;
    if inputs.is_empty() {
        return Err(ModelError::Unsupported("the graph needs at least one input".into()));
    }
    let outputs = tensor_specs(&graph.output, &HashSet::new()).and_then(|outputs| {
        if outputs.is_empty() { Err(ModelError::Unsupported("the graph needs at least one output".into())) } else { Ok(outputs) }
    });
    Ok((inputs, outputs))
}

/// A deterministic input for the self-test: batch 1, values in [0, 1) for floats, 0 for integers.
fn self_test_inputs(inputs: &[TensorSpec], seed: u64) -> Vec<TensorData> {
    let mut rng = fastrand::Rng::with_seed(seed);
    inputs
        .iter()
        .map(|spec| {
            let shape: Vec<u64> = spec
                .shape
                .iter()
                .map(|dim| match dim {
                    Dim::Fixed(size) => *size,
                    Dim::Dynamic => 1,
                })
                .collect();
            let n_values = shape.iter().product::<u64>() as usize;
            let values = match spec.dtype {
                DType::F32 => TensorValues::F32((0..n_values).map(|_| rng.f32()).collect()),
                DType::I64 => TensorValues::I64(vec![0; n_values]),
            };
            TensorData { name: spec.name.clone(), shape, values }
        })
        .collect()
}

fn to_tensor(data: &TensorData) -> TractResult<TValue> {
    let shape: Vec<usize> = data.shape.iter().map(|&dim| dim as usize).collect();
    let tensor = match &data.values {
        TensorValues::F32(values) => Tensor::from_shape(&shape, values)?,
        TensorValues::I64(values) => Tensor::from_shape(&shape, values)?,
    };
    Ok(tensor.into_tvalue())
}

/// Reads an output in its declared datatype, as devices do (see the agent's `tensor_data`).
fn from_tensor(name: &str, value: &TValue, declared: Option<DType>) -> TractResult<TensorData> {
    let dtype = declared.unwrap_or(if value.datum_type() == DatumType::I64 { DType::I64 } else { DType::F32 });
    let values = match dtype {
        DType::I64 => TensorValues::I64(value.cast_to::<i64>()?.try_as_plain_ram()?.as_slice::<i64>()?.to_vec()),
        DType::F32 => TensorValues::F32(value.cast_to::<f32>()?.try_as_plain_ram()?.as_slice::<f32>()?.to_vec()),
    };
    Ok(TensorData { name: name.to_string(), shape: value.shape().iter().map(|&dim| dim as u64).collect(), values })
}

/// Loads the model in tract with the self-test's concrete shapes, runs it, and returns the
/// outputs and the time of the second run.
fn run_self_test(mut model: InferenceModel, inputs: &[TensorData], outputs: &[TensorSpec]) -> Result<(Vec<TensorData>, f32), ModelError> {
    let tract_error = |error: TractError| ModelError::TractLoad(format!("{error:#}"));
    for (input_idx, input) in inputs.iter().enumerate() {
        let datum_type = match input.values {
            TensorValues::F32(_) => f32::datum_type(),
            TensorValues::I64(_) => i64::datum_type(),
        };
        let shape: Vec<usize> = input.shape.iter().map(|&dim| dim as usize).collect();
        model = model.with_input_fact(input_idx, InferenceFact::dt_shape(datum_type, shape)).map_err(tract_error)?;
    }
    let plan = model.into_optimized().and_then(|optimized| optimized.into_runnable()).map_err(tract_error)?;
    let run = || -> TractResult<TVec<TValue>> { plan.run(inputs.iter().map(to_tensor).collect::<TractResult<_>>()?) };
    run().map_err(|error| ModelError::SelfTest(format!("{error:#}")))?;
    let started = Instant::now();
    let results = run().map_err(|error| ModelError::SelfTest(format!("{error:#}")))?;
    let elapsed_ms = started.elapsed().as_secs_f32() * 1000.0;
    let mut recorded = Vec::new();
    for (output_idx, value) in results.iter().enumerate() {
        let spec = outputs.get(output_idx);
        let name = spec.map(|spec| spec.name.as_str()).unwrap_or("output");
        let data = from_tensor(name, value, spec.map(|spec| spec.dtype)).map_err(|error| ModelError::SelfTest(format!("{error:#}")))?;
        if let TensorValues::F32(values) = &data.values
            && values.iter().any(|value| !value.is_finite())
        {
            return Err(ModelError::SelfTest(format!("output `{name}` is not finite on the self-test input")));
        }
        recorded.push(data);
    }
    Ok((recorded, elapsed_ms))
}

/// Checks an ONNX file and builds its signed bundle.
pub fn build_bundle(onnx: &[u8], options: &BundleOptions, key_pair: &SigningKeyPair, now_ms: u64) -> Result<BuiltBundle, ModelError> {
    // tract first: a model it cannot load is refused with tract's own reason.
    let model = tract_onnx::onnx().model_for_read(&mut &onnx[..]).map_err(|error| match pb::ModelProto::decode(onnx) {
        Err(decode_error) => ModelError::NotOnnx(decode_error.to_string()),
        Ok(_) => ModelError::TractLoad(format!("{error:#}")),
    })?;
    let (inputs, outputs) = inspect_parts(onnx)?;
    let onnx_hash = sha256(onnx);
    let seed = u64::from_le_bytes(onnx_hash[..8].try_into().unwrap_or_default());
    let test_inputs = self_test_inputs(&inputs, seed);
    let output_names = outputs.as_ref().map(Vec::clone).unwrap_or_default();
    let (expected_outputs, self_test_ms) = run_self_test(model, &test_inputs, &output_names)?;
    let outputs = outputs?;
    let profile_bytes = match &options.profile {
        Some(bytes) => {
            let profile = Profile::from_json(bytes).map_err(|error| ModelError::Profile(error.to_string()))?;
            check_profile(&profile, &inputs, &outputs)?;
            Some(bytes.as_slice())
        }
        None => None,
    };
    let mut payload = onnx.to_vec();
    let mut files = vec![FileEntry { role: ROLE_MODEL.into(), name: "model.onnx".into(), length: onnx.len() as u64, sha256: onnx_hash }];
    if let Some(profile_bytes) = profile_bytes {
        files.push(FileEntry {
            role: ROLE_PROFILE.into(),
            name: "profile.json".into(),
            length: profile_bytes.len() as u64,
            sha256: sha256(profile_bytes),
        });
        payload.extend_from_slice(profile_bytes);
    }
    let budget = options.latency_budget_ms.unwrap_or_else(|| MIN_LATENCY_BUDGET_MS.max((self_test_ms * 100.0).ceil() as u32));
    let manifest = Manifest {
        format_version: MANIFEST_FORMAT_VERSION,
        model: options.model.clone(),
        version: options.version,
        created_at_ms: now_ms,
        expires_at_ms: options.expires_in_ms.map(|expires_in| now_ms + expires_in),
        key_id: key_pair.key_id(),
        files,
        chunk_size: DEFAULT_CHUNK_SIZE,
        chunk_hashes: chunk_hashes(&payload, DEFAULT_CHUNK_SIZE),
        inputs: inputs.clone(),
        outputs: outputs.clone(),
        self_test: SelfTest { inputs: test_inputs, expected_outputs, tolerance: options.tolerance, latency_budget_ms: budget },
    };
    let signed_manifest = SignedManifest::sign(&manifest, key_pair)?;
    // The manifest travels inside each desired state; it must fit in one MQTT message.
    if signed_manifest.body.len() > MAX_MANIFEST_BYTES {
        return Err(ModelError::Unsupported(format!(
            "the signed manifest would be {} bytes (limit {MAX_MANIFEST_BYTES}): the self-test tensors are too large",
            signed_manifest.body.len()
        )));
    }
    let mut file_bytes = Vec::with_capacity(payload.len() + 8192);
    write_bundle_file(&mut file_bytes, &signed_manifest, &payload)?;
    Ok(BuiltBundle { signed_manifest, manifest, schema: ModelSchema::from_specs(&inputs, &outputs), file_bytes, self_test_ms })
}

pub fn schema_of(manifest: &Manifest) -> ModelSchema {
    ModelSchema::from_specs(&manifest.inputs, &manifest.outputs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetml_shared::bundle::{check_payload, read_bundle_file};
    use fleetml_shared::signing::TrustedKeys;

    fn fixture(name: &str) -> Vec<u8> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../firmware-tests/fixtures/models").join(name);
        std::fs::read(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
    }

    fn options(model: &str) -> BundleOptions {
        BundleOptions {
            model: model.into(),
            version: 1,
            expires_in_ms: None,
            latency_budget_ms: None,
            tolerance: DEFAULT_SELF_TEST_TOLERANCE,
            profile: None,
        }
    }

    #[test]
    fn a_scikit_learn_export_becomes_a_verifiable_bundle() {
        let key_pair = SigningKeyPair::generate().unwrap();
        let onnx = fixture("mlp_digits.onnx");
        let built = build_bundle(&onnx, &options("digits"), &key_pair, 1_000).unwrap();
        assert_eq!(built.schema.inputs, vec![TensorSchema { name: "input".into(), datatype: "FP32".into(), shape: vec![-1, 64] }]);
        assert_eq!(built.schema.outputs.iter().map(|output| output.name.as_str()).collect::<Vec<_>>(), ["label", "probabilities"]);
        let (signed, payload) = read_bundle_file(&mut built.file_bytes.as_slice()).unwrap();
        let verified = signed.verify(&TrustedKeys::new(vec![key_pair.public_key()]), 2_000).unwrap();
        check_payload(&verified.manifest, &payload).unwrap();
        assert_eq!(payload, onnx);
        assert_eq!(verified.manifest.self_test.expected_outputs.len(), 2);
    }

    #[test]
    fn a_model_tract_cannot_load_is_refused_with_the_reason() {
        let key_pair = SigningKeyPair::generate().unwrap();
        let error = build_bundle(&fixture("broken_zipmap.onnx"), &options("iris"), &key_pair, 1).err().unwrap();
        let message = error.to_string();
        assert!(message.starts_with("tract cannot load this model") && message.contains("ZipMap"), "{message}");
    }

    #[test]
    fn garbage_is_not_onnx() {
        assert!(matches!(inspect(b"definitely not protobuf \xff\xff"), Err(ModelError::NotOnnx(_))));
        assert!(matches!(inspect(&[]), Err(ModelError::NotOnnx(_))));
    }
}
