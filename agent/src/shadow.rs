//! Shadow candidates: a second model of the same name runs on live requests after the active
//! one has answered, never answers itself, and is compared with the active model's outputs.

use std::sync::Arc;
use std::time::Instant;

use fleetml_shared::bundle::{TensorData, TensorValues};
use tokio::sync::Semaphore;

use crate::host::{Comparison, ModelHost};
use crate::inference::{InferenceError, InferencePool, LoadedModel};

/// Mirrored requests in flight per process. When all are taken a request is not mirrored
/// (and counted as skipped): shadowing must never queue work in front of serving.
pub const MAX_SHADOW_IN_FLIGHT: usize = 32;

/// Single scores agree within this (relative above 1).
const SCORE_TOLERANCE: f64 = 1e-3;

/// Runs `candidate` on `inputs` in the background and records how it compared with the
/// active model's `active_outputs`.
pub fn mirror(
    pool: &InferencePool,
    permits: &Arc<Semaphore>,
    host: Arc<ModelHost>,
    active: &LoadedModel,
    candidate: Arc<LoadedModel>,
    inputs: Vec<TensorData>,
    active_outputs: Vec<TensorData>,
) {
    let Ok(permit) = permits.clone().try_acquire_owned() else {
        host.record_shadow_skipped(&active.model, active.version, candidate.version);
        return;
    };
    let pool = pool.clone();
    let (model, active_version) = (active.model.clone(), active.version);
    tokio::spawn(async move {
        let _permit = permit;
        let candidate_version = candidate.version;
        let started = Instant::now();
        let result = pool.run(candidate, inputs).await;
        let latency_us = started.elapsed().as_micros() as u64;
        let comparison = match result {
            Ok(candidate_outputs) => Some(compare(&active_outputs, &candidate_outputs)),
            Err(InferenceError::Overloaded) => return host.record_shadow_skipped(&model, active_version, candidate_version),
            Err(error) => {
                tracing::debug!(%model, candidate_version, %error, "shadow candidate failed");
                None
            }
        };
        host.record_shadow(&model, active_version, candidate_version, latency_us, comparison);
    });
}

/// Compares two models' outputs row by row (the first dimension is the batch). A row agrees
/// when every output agrees: integers equal, score vectors with the same top-1 index, single
/// scores within [`SCORE_TOLERANCE`]. An output missing from the candidate, or shaped or typed
/// differently, makes every row disagree.
pub fn compare(active: &[TensorData], candidate: &[TensorData]) -> Comparison {
    let n_rows = active.first().and_then(|output| output.shape.first().copied()).unwrap_or(1).max(1) as usize;
    let mut agreed = vec![true; n_rows];
    let mut deltas = vec![0.0f64; n_rows];
    for active_output in active {
        let matching = candidate.iter().find(|output| output.name == active_output.name);
        let Some(candidate_output) = matching.filter(|output| output.shape == active_output.shape) else {
            agreed.iter_mut().for_each(|row| *row = false);
            continue;
        };
        match (&active_output.values, &candidate_output.values) {
            (TensorValues::F32(left), TensorValues::F32(right)) if left.len() == right.len() && left.len() % n_rows == 0 => {
                let row_len = left.len() / n_rows;
                for row_idx in 0..n_rows {
                    let (left_row, right_row) = (&left[row_idx * row_len..][..row_len], &right[row_idx * row_len..][..row_len]);
                    let delta = left_row.iter().zip(right_row).map(|(l, r)| (f64::from(*l) - f64::from(*r)).abs()).fold(0.0, f64::max);
                    deltas[row_idx] = deltas[row_idx].max(delta);
                    let row_agrees = match row_len {
                        0 => true,
                        1 => delta <= SCORE_TOLERANCE * f64::from(left_row[0]).abs().max(1.0),
                        _ => argmax(left_row) == argmax(right_row),
                    };
                    agreed[row_idx] &= row_agrees;
                }
            }
            (TensorValues::I64(left), TensorValues::I64(right)) if left.len() == right.len() && left.len() % n_rows == 0 => {
                let row_len = left.len() / n_rows;
                for row_idx in 0..n_rows {
                    agreed[row_idx] &= left[row_idx * row_len..][..row_len] == right[row_idx * row_len..][..row_len];
                }
            }
            _ => agreed.iter_mut().for_each(|row| *row = false),
        }
    }
    Comparison {
        rows: n_rows as u64,
        rows_agreed: agreed.iter().filter(|row| **row).count() as u64,
        delta_sum: deltas.iter().sum(),
        delta_max: deltas.iter().copied().fold(0.0, f64::max),
    }
}

fn argmax(values: &[f32]) -> Option<usize> {
    values.iter().enumerate().filter(|(_, value)| !value.is_nan()).max_by(|(_, left), (_, right)| left.total_cmp(right)).map(|(idx, _)| idx)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn floats(name: &str, shape: &[u64], values: &[f32]) -> TensorData {
        TensorData { name: name.into(), shape: shape.to_vec(), values: TensorValues::F32(values.to_vec()) }
    }

    fn ints(name: &str, shape: &[u64], values: &[i64]) -> TensorData {
        TensorData { name: name.into(), shape: shape.to_vec(), values: TensorValues::I64(values.to_vec()) }
    }

    #[track_caller]
    fn check(active: &[TensorData], candidate: &[TensorData], rows: u64, rows_agreed: u64, delta_max: f64) {
        let comparison = compare(active, candidate);
        assert_eq!((comparison.rows, comparison.rows_agreed), (rows, rows_agreed), "{comparison:?}");
        assert!((comparison.delta_max - delta_max).abs() < 1e-6, "{comparison:?}");
    }

    #[test]
    fn rows_agree_by_top1_integers_or_close_scores() {
        let probabilities = floats("p", &[2, 3], &[0.1, 0.7, 0.2, 0.5, 0.3, 0.2]);
        check(std::slice::from_ref(&probabilities), std::slice::from_ref(&probabilities), 2, 2, 0.0);
        // Row 0 keeps its top-1 with different scores; row 1 changes it.
        check(std::slice::from_ref(&probabilities), &[floats("p", &[2, 3], &[0.2, 0.6, 0.2, 0.3, 0.5, 0.2])], 2, 1, 0.2);
        check(&[ints("label", &[3], &[1, 2, 3])], &[ints("label", &[3], &[1, 0, 3])], 3, 2, 0.0);
        check(&[floats("y", &[2, 1], &[10.0, 1.0])], &[floats("y", &[2, 1], &[10.005, 1.5])], 2, 1, 0.5);
        // Both outputs must agree for a row to agree.
        check(&[ints("label", &[2], &[1, 0]), probabilities.clone()], &[ints("label", &[2], &[1, 1]), probabilities.clone()], 2, 1, 0.0);
    }

    #[test]
    fn a_candidate_with_other_outputs_disagrees_everywhere() {
        let probabilities = floats("p", &[2, 3], &[0.1, 0.7, 0.2, 0.5, 0.3, 0.2]);
        check(std::slice::from_ref(&probabilities), &[floats("q", &[2, 3], &[0.1, 0.7, 0.2, 0.5, 0.3, 0.2])], 2, 0, 0.0);
        check(std::slice::from_ref(&probabilities), &[floats("p", &[3, 2], &[0.1, 0.7, 0.2, 0.5, 0.3, 0.2])], 2, 0, 0.0);
        check(&[probabilities], &[ints("p", &[2, 3], &[0, 1, 0, 1, 0, 0])], 2, 0, 0.0);
    }
}
