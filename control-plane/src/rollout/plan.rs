//! Wave planning: which devices each wave adds. Devices are ordered by a stable hash, so a
//! plan is the same after a restart and the first waves are not always the same hardware.

use sha2::{Digest, Sha256};

use super::policy::WaveSize;

/// A device's position in every rollout of `salt` (the rollout id): stable and uniform.
pub fn rank(salt: &str, device_id: &str) -> u64 {
    let digest = Sha256::digest(format!("{salt}\0{device_id}").as_bytes());
    u64::from_be_bytes(digest[..8].try_into().unwrap_or_default())
}

/// Splits the target into waves. Sizes are cumulative; every wave gets at least one device
/// while devices remain, and the last wave takes whatever is left.
pub fn plan_waves(salt: &str, device_ids: &[String], sizes: &[WaveSize]) -> Vec<Vec<String>> {
    let mut ordered: Vec<&String> = device_ids.iter().collect();
    ordered.sort_by_key(|device_id| (rank(salt, device_id), device_id.as_str()));
    let total = ordered.len() as u64;
    let mut waves = Vec::with_capacity(sizes.len());
    let mut taken = 0u64;
    for (wave_idx, size) in sizes.iter().enumerate() {
        let cumulative = match size {
            WaveSize::Percent(percent) => ((percent / 100.0) * total as f64).ceil() as u64,
            WaveSize::Count(count) => *count,
        };
        let is_last = wave_idx + 1 == sizes.len();
        let mut end = if is_last { total } else { cumulative.clamp(taken.min(total), total) };
        if end == taken && taken < total {
            end = taken + 1;
        }
        waves.push(ordered[taken as usize..end as usize].iter().map(|device_id| device_id.to_string()).collect());
        taken = end;
    }
    waves
}

#[cfg(test)]
mod tests {
    use super::*;

    fn devices(n: usize) -> Vec<String> {
        (0..n).map(|device_idx| format!("dev-{device_idx:05}")).collect()
    }

    #[test]
    fn percentages_are_cumulative_and_every_device_lands_once() {
        let waves = plan_waves(
            "r1",
            &devices(1000),
            &[WaveSize::Percent(1.0), WaveSize::Percent(10.0), WaveSize::Percent(50.0), WaveSize::Percent(100.0)],
        );
        assert_eq!(waves.iter().map(Vec::len).collect::<Vec<_>>(), [10, 90, 400, 500]);
        let mut all: Vec<String> = waves.concat();
        all.sort();
        assert_eq!(all, devices(1000));
    }

    #[test]
    fn tiny_fleets_still_get_a_canary_and_plans_are_stable() {
        let waves = plan_waves("r1", &devices(3), &[WaveSize::Percent(1.0), WaveSize::Percent(10.0), WaveSize::Percent(100.0)]);
        assert_eq!(waves.iter().map(Vec::len).collect::<Vec<_>>(), [1, 1, 1]);
        assert_eq!(
            plan_waves("r1", &devices(3), &[WaveSize::Count(1), WaveSize::Count(3)]),
            plan_waves("r1", &devices(3), &[WaveSize::Count(1), WaveSize::Count(3)])
        );
        assert_ne!(
            plan_waves("r1", &devices(50), &[WaveSize::Count(5)]),
            plan_waves("r2", &devices(50), &[WaveSize::Count(5)]),
            "another rollout, another canary"
        );
        assert!(plan_waves("r1", &[], &[WaveSize::Percent(100.0)]).concat().is_empty());
    }
}
