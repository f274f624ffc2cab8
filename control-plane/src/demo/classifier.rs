//! The demo's model, made without Python or downloads: a classifier trained in Rust on
//! synthetic sensor data and written out as an ONNX graph with tract's protobuf types.
//!
//! Version 1 is softmax regression; version 2 adds a hidden ReLU layer. Both take
//! `features` FP32 [N, 4] and give `probabilities` FP32 [N, 3] and `label` INT64 [N].

use prost::Message;
use tract_onnx::pb;
use tract_onnx::pb::tensor_shape_proto::dimension;

pub const N_FEATURES: usize = 4;
pub const N_CLASSES: usize = 3;

/// Synthetic readings of three machine states. Idle sits apart; normal and faulty differ
/// only in the vibration feature (index 2), which is near zero when normal and large with
/// either sign when faulty: no linear model separates them, a hidden layer does.
pub fn dataset(n_samples: usize, seed: u64) -> (Vec<[f32; N_FEATURES]>, Vec<usize>) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut normal = || {
        // Box-Muller.
        let (u1, u2) = (rng.f64().max(1e-12), rng.f64());
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    };
    let centres = [[-1.0f32, -1.0, 0.0, 0.2], [1.0, 1.0, 0.0, 0.5], [1.0, 1.0, 0.0, 0.6]];
    let mut features = Vec::with_capacity(n_samples);
    let mut labels = Vec::with_capacity(n_samples);
    for sample_idx in 0..n_samples {
        let class = sample_idx % N_CLASSES;
        let mut row = [0f32; N_FEATURES];
        for (feature_idx, value) in row.iter_mut().enumerate() {
            *value = centres[class][feature_idx] + 0.6 * normal();
        }
        row[2] = if class == 2 {
            let sign = if normal() > 0.0 { 1.0 } else { -1.0 };
            sign * 2.0 + 0.4 * normal()
        } else {
            0.5 * normal()
        };
        features.push(row);
        labels.push(class);
    }
    (features, labels)
}

/// A dense layer's weights, row-major [inputs, outputs].
#[derive(Clone, Debug)]
pub struct Dense {
    pub weights: Vec<f32>,
    pub bias: Vec<f32>,
    pub n_in: usize,
    pub n_out: usize,
}

impl Dense {
    fn new(n_in: usize, n_out: usize, rng: &mut fastrand::Rng) -> Self {
        let scale = (2.0 / n_in as f32).sqrt();
        Dense { weights: (0..n_in * n_out).map(|_| (rng.f32() - 0.5) * 2.0 * scale).collect(), bias: vec![0.0; n_out], n_in, n_out }
    }

    fn forward(&self, input: &[f32]) -> Vec<f32> {
        (0..self.n_out)
            .map(|out_idx| {
                self.bias[out_idx] + (0..self.n_in).map(|in_idx| input[in_idx] * self.weights[in_idx * self.n_out + out_idx]).sum::<f32>()
            })
            .collect()
    }
}

#[derive(Clone, Debug)]
pub struct Classifier {
    /// Empty for softmax regression; one hidden ReLU layer otherwise.
    pub hidden: Option<Dense>,
    pub output: Dense,
}

fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.iter().map(|logit| (logit - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.iter().map(|value| value / sum).collect()
}

impl Classifier {
    /// An untrained model of any width: for transfer and load tests that need big bundles
    /// (about 4 bytes per weight: `n_features * hidden_units`).
    pub fn random(n_features: usize, hidden_units: usize, seed: u64) -> Self {
        let mut rng = fastrand::Rng::with_seed(seed);
        let hidden = Dense::new(n_features, hidden_units, &mut rng);
        Classifier { hidden: Some(hidden), output: Dense::new(hidden_units, N_CLASSES, &mut rng) }
    }

    pub fn n_features(&self) -> usize {
        self.hidden.as_ref().map(|hidden| hidden.n_in).unwrap_or(self.output.n_in)
    }

    pub fn predict_proba(&self, row: &[f32]) -> Vec<f32> {
        match &self.hidden {
            Some(hidden) => {
                let activations: Vec<f32> = hidden.forward(row).into_iter().map(|value| value.max(0.0)).collect();
                softmax(&self.output.forward(&activations))
            }
            None => softmax(&self.output.forward(row)),
        }
    }

    pub fn accuracy(&self, features: &[[f32; N_FEATURES]], labels: &[usize]) -> f32 {
        let correct = features
            .iter()
            .zip(labels)
            .filter(|(row, label)| {
                let probabilities = self.predict_proba(&row[..]);
                let predicted = (0..N_CLASSES).max_by(|&left, &right| probabilities[left].total_cmp(&probabilities[right])).unwrap_or(0);
                predicted == **label
            })
            .count();
        correct as f32 / labels.len().max(1) as f32
    }

    /// Full-batch gradient descent on cross-entropy.
    #[allow(clippy::needless_range_loop)] // Index loops mirror the maths of backpropagation.
    pub fn train(
        features: &[[f32; N_FEATURES]],
        labels: &[usize],
        hidden_units: usize,
        epochs: usize,
        learning_rate: f32,
        seed: u64,
    ) -> Self {
        let mut rng = fastrand::Rng::with_seed(seed);
        let hidden = (hidden_units > 0).then(|| Dense::new(N_FEATURES, hidden_units, &mut rng));
        let output_inputs = if hidden_units > 0 { hidden_units } else { N_FEATURES };
        let mut model = Classifier { hidden, output: Dense::new(output_inputs, N_CLASSES, &mut rng) };
        let n = features.len().max(1) as f32;
        for _ in 0..epochs {
            let mut grad_output =
                Dense { weights: vec![0.0; model.output.weights.len()], bias: vec![0.0; N_CLASSES], n_in: output_inputs, n_out: N_CLASSES };
            let mut grad_hidden = model.hidden.as_ref().map(|hidden| Dense {
                weights: vec![0.0; hidden.weights.len()],
                bias: vec![0.0; hidden.n_out],
                n_in: hidden.n_in,
                n_out: hidden.n_out,
            });
            for (row, &label) in features.iter().zip(labels) {
                let (activations, pre_activations) = match &model.hidden {
                    Some(hidden) => {
                        let pre = hidden.forward(&row[..]);
                        (pre.iter().map(|value| value.max(0.0)).collect::<Vec<f32>>(), Some(pre))
                    }
                    None => (row.to_vec(), None),
                };
                let mut delta = softmax(&model.output.forward(&activations));
                delta[label] -= 1.0;
                for out_idx in 0..N_CLASSES {
                    grad_output.bias[out_idx] += delta[out_idx];
                    for in_idx in 0..output_inputs {
                        grad_output.weights[in_idx * N_CLASSES + out_idx] += activations[in_idx] * delta[out_idx];
                    }
                }
                if let (Some(grad_hidden), Some(pre), Some(hidden)) = (grad_hidden.as_mut(), pre_activations, model.hidden.as_ref()) {
                    for hidden_idx in 0..hidden.n_out {
                        if pre[hidden_idx] <= 0.0 {
                            continue;
                        }
                        let back: f32 =
                            (0..N_CLASSES).map(|out_idx| model.output.weights[hidden_idx * N_CLASSES + out_idx] * delta[out_idx]).sum();
                        grad_hidden.bias[hidden_idx] += back;
                        for in_idx in 0..N_FEATURES {
                            grad_hidden.weights[in_idx * hidden.n_out + hidden_idx] += row[in_idx] * back;
                        }
                    }
                }
            }
            let step = |layer: &mut Dense, grad: &Dense| {
                layer.weights.iter_mut().zip(&grad.weights).for_each(|(weight, g)| *weight -= learning_rate * g / n);
                layer.bias.iter_mut().zip(&grad.bias).for_each(|(bias, g)| *bias -= learning_rate * g / n);
            };
            step(&mut model.output, &grad_output);
            if let (Some(hidden), Some(grad)) = (model.hidden.as_mut(), grad_hidden.as_ref()) {
                step(hidden, grad);
            }
        }
        model
    }

    /// The ONNX graph (opset 13): MatMul/Add[/Relu/MatMul/Add], Softmax, ArgMax.
    pub fn to_onnx(&self, graph_name: &str) -> Vec<u8> {
        let mut nodes = Vec::new();
        let mut initializers = Vec::new();
        let mut current = "features".to_string();
        let mut add_dense = |layer: &Dense, prefix: &str, current: &mut String, nodes: &mut Vec<pb::NodeProto>| {
            initializers.push(float_tensor(&format!("{prefix}_w"), &[layer.n_in as i64, layer.n_out as i64], &layer.weights));
            initializers.push(float_tensor(&format!("{prefix}_b"), &[layer.n_out as i64], &layer.bias));
            nodes.push(node("MatMul", &[current, &format!("{prefix}_w")], &format!("{prefix}_mm"), vec![]));
            nodes.push(node("Add", &[&format!("{prefix}_mm"), &format!("{prefix}_b")], &format!("{prefix}_out"), vec![]));
            *current = format!("{prefix}_out");
        };
        if let Some(hidden) = &self.hidden {
            add_dense(hidden, "hidden", &mut current, &mut nodes);
            nodes.push(node("Relu", &[&current], "hidden_relu", vec![]));
            current = "hidden_relu".into();
        }
        add_dense(&self.output, "logits", &mut current, &mut nodes);
        nodes.push(node("Softmax", &[&current], "probabilities", vec![int_attribute("axis", 1)]));
        nodes.push(node("ArgMax", &["probabilities"], "label", vec![int_attribute("axis", 1), int_attribute("keepdims", 0)]));
        let model = pb::ModelProto {
            ir_version: 8,
            producer_name: "fleetml-demo".into(),
            opset_import: vec![pb::OperatorSetIdProto { domain: String::new(), version: 13 }],
            graph: Some(pb::GraphProto {
                name: graph_name.into(),
                node: nodes,
                initializer: initializers,
                input: vec![value_info("features", 1, &[None, Some(self.n_features() as i64)])],
                output: vec![value_info("probabilities", 1, &[None, Some(N_CLASSES as i64)]), value_info("label", 7, &[None])],
                ..Default::default()
            }),
            ..Default::default()
        };
        model.encode_to_vec()
    }
}

fn float_tensor(name: &str, dims: &[i64], values: &[f32]) -> pb::TensorProto {
    pb::TensorProto { name: name.into(), dims: dims.to_vec(), data_type: 1, float_data: values.to_vec(), ..Default::default() }
}

fn node(op_type: &str, inputs: &[&str], output: &str, attribute: Vec<pb::AttributeProto>) -> pb::NodeProto {
    pb::NodeProto {
        op_type: op_type.into(),
        name: output.into(),
        input: inputs.iter().map(|input| input.to_string()).collect(),
        output: vec![output.into()],
        attribute,
        ..Default::default()
    }
}

fn int_attribute(name: &str, value: i64) -> pb::AttributeProto {
    pb::AttributeProto { name: name.into(), i: value, r#type: pb::attribute_proto::AttributeType::Int as i32, ..Default::default() }
}

fn value_info(name: &str, elem_type: i32, dims: &[Option<i64>]) -> pb::ValueInfoProto {
    let dim = dims
        .iter()
        .map(|dim| pb::tensor_shape_proto::Dimension {
            value: Some(match dim {
                Some(size) => dimension::Value::DimValue(*size),
                None => dimension::Value::DimParam("N".into()),
            }),
            ..Default::default()
        })
        .collect();
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor { elem_type, shape: Some(pb::TensorShapeProto { dim }) })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mlp_beats_softmax_regression_and_both_export() {
        let (features, labels) = dataset(1500, 7);
        let (test_features, test_labels) = dataset(600, 8);
        let linear = Classifier::train(&features, &labels, 0, 300, 0.5, 1);
        let mlp = Classifier::train(&features, &labels, 16, 300, 0.5, 1);
        let linear_accuracy = linear.accuracy(&test_features, &test_labels);
        let mlp_accuracy = mlp.accuracy(&test_features, &test_labels);
        assert!(linear_accuracy > 0.55, "softmax regression accuracy {linear_accuracy}");
        assert!(mlp_accuracy > linear_accuracy + 0.15, "mlp {mlp_accuracy} vs linear {linear_accuracy}");
        for model in [&linear, &mlp] {
            let onnx = model.to_onnx("demo");
            let (inputs, outputs) = crate::registry::inspect(&onnx).unwrap();
            assert_eq!(inputs[0].name, "features");
            assert_eq!(outputs.iter().map(|output| output.name.as_str()).collect::<Vec<_>>(), ["probabilities", "label"]);
        }
    }
}
