//! A/B assignment: a device's variant is a stable hash of the experiment and the device id,
//! so it survives restarts and needs no stored table.

use crate::rollout::plan::rank;

/// The variant `device_id` gets among `(name, weight)` pairs (weights need not sum to 1).
pub fn assign<'a>(experiment: &str, device_id: &str, variants: &'a [(String, f64)]) -> Option<&'a str> {
    let total: f64 = variants.iter().map(|(_, weight)| weight.max(0.0)).sum();
    if total <= 0.0 {
        return None;
    }
    // The top 53 bits give a uniform fraction in [0, 1).
    let fraction = (rank(experiment, device_id) >> 11) as f64 / (1u64 << 53) as f64;
    let mut cumulative = 0.0;
    for (name, weight) in variants {
        cumulative += weight.max(0.0) / total;
        if fraction < cumulative {
            return Some(name);
        }
    }
    variants.iter().rev().find(|(_, weight)| *weight > 0.0).map(|(name, _)| name.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ten_thousand_devices_land_within_one_and_a_half_points_of_each_weight() {
        let variants = vec![("a".to_string(), 0.5), ("b".to_string(), 0.3), ("c".to_string(), 0.2)];
        let mut counts = [0usize; 3];
        for device_idx in 0..10_000 {
            let variant = assign("exp-1", &format!("device-{device_idx}"), &variants).unwrap();
            counts[variants.iter().position(|(name, _)| name == variant).unwrap()] += 1;
        }
        for ((name, weight), count) in variants.iter().zip(counts) {
            let share = count as f64 / 10_000.0;
            assert!((share - weight).abs() < 0.015, "{name}: {share} vs {weight}");
        }
    }

    #[test]
    fn assignment_is_stable_and_depends_on_the_experiment() {
        let variants = vec![("a".to_string(), 1.0), ("b".to_string(), 1.0)];
        assert_eq!(assign("e", "d1", &variants), assign("e", "d1", &variants));
        let moved = (0..200)
            .filter(|device_idx| assign("e1", &format!("d{device_idx}"), &variants) != assign("e2", &format!("d{device_idx}"), &variants))
            .count();
        assert!(moved > 50, "another experiment reshuffles ({moved} of 200 moved)");
        assert_eq!(assign("e", "d", &[]), None);
        assert_eq!(assign("e", "d", &[("only".to_string(), 0.0)]), None);
    }
}
