//! Which upstream gets the next attempt: weighted least-outstanding with two random choices.
//!
//! Picking the single least-loaded upstream looks best but herds: many workers choosing at the
//! same moment all see the same momentarily idle upstream and pile onto it, and the counts they
//! read are stale by the time the requests land. "Power of two choices" (Mitzenmacher) draws two
//! candidates at random and takes the less loaded one: almost as even as the global minimum, it
//! never sends everyone to one place, and it is O(1) whatever the number of upstreams.

/// One upstream the balancer may choose (already filtered: e.g. its breaker is not open).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    /// What [`pick`] returns: the caller's own index for this upstream.
    pub index: usize,
    /// Its share of the traffic relative to the others; 0 counts as 1, so a misconfigured
    /// weight cannot divide by zero or starve an upstream completely.
    pub weight: u32,
    /// Attempts in flight to it now.
    pub outstanding: u64,
}

/// The `index` of the candidate to use, or None when there are none. Two distinct candidates are
/// drawn uniformly at random and the one with the lower load `(outstanding + 1) / weight` wins;
/// on a tie the first drawn wins, so equal upstreams share evenly. The `+ 1` counts the request
/// being placed, so among idle upstreams the heavier weight still wins.
pub fn pick(candidates: &[Candidate], rng: &mut fastrand::Rng) -> Option<usize> {
    let count = candidates.len();
    if count < 2 {
        return candidates.first().map(|c| c.index);
    }
    let first = rng.usize(..count);
    // A second draw from the others: skip over `first` so the two are always distinct.
    let mut second = rng.usize(..count - 1);
    if second >= first {
        second += 1;
    }
    let (a, b) = (candidates.get(first)?, candidates.get(second)?);
    Some(if lighter(b, a) { b.index } else { a.index })
}

/// Whether `x` carries strictly less load per unit of weight than `y`:
/// `(x.out + 1) / x.w < (y.out + 1) / y.w`, compared by cross-multiplication in u128, which
/// cannot overflow ((2^64) * (2^32) < 2^128) and needs no floats.
fn lighter(x: &Candidate, y: &Candidate) -> bool {
    let load = |c: &Candidate| u128::from(c.outstanding) + 1;
    let weight = |c: &Candidate| u128::from(c.weight.max(1));
    load(x) * weight(y) < load(y) * weight(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidates(weights: &[u32]) -> Vec<Candidate> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &weight)| Candidate {
                index: i * 10,
                weight,
                outstanding: 0,
            })
            .collect()
    }

    #[test]
    fn empty_and_single() {
        let mut rng = fastrand::Rng::with_seed(1);
        assert_eq!(pick(&[], &mut rng), None);
        let one = candidates(&[0]);
        assert_eq!(pick(&one, &mut rng), Some(0));
    }

    #[test]
    fn picks_follow_the_weights_when_outstanding_tracks_them() {
        let mut rng = fastrand::Rng::with_seed(42);
        let weights = [1, 2, 3, 4];
        let mut pool = candidates(&weights);
        let mut picked = [0u64; 4];
        // Bounded: 10,000 picks; nothing completes, so outstanding is each upstream's total.
        for _ in 0..10_000 {
            let index = pick(&pool, &mut rng).unwrap();
            let slot = pool.iter().position(|c| c.index == index).unwrap();
            pool[slot].outstanding += 1;
            picked[slot] += 1;
        }
        let total_weight: u32 = weights.iter().sum();
        for (slot, &weight) in weights.iter().enumerate() {
            let expected = 10_000.0 * f64::from(weight) / f64::from(total_weight);
            let got = picked[slot] as f64;
            assert!(
                (got - expected).abs() < expected * 0.1,
                "weight {weight}: {got} picks, expected about {expected}"
            );
        }
    }

    #[test]
    fn equal_upstreams_share_evenly() {
        let mut rng = fastrand::Rng::with_seed(9);
        let pool = candidates(&[1, 1, 1]);
        let mut picked = [0u32; 3];
        for _ in 0..9_000 {
            picked[pick(&pool, &mut rng).unwrap() / 10] += 1;
        }
        for count in picked {
            assert!((2_600..=3_400).contains(&count), "{picked:?}");
        }
    }

    #[test]
    fn a_backend_with_much_more_outstanding_is_not_chosen() {
        let mut rng = fastrand::Rng::with_seed(5);
        let mut pool = candidates(&[1, 1, 1, 1]);
        pool[2].outstanding = 1_000;
        // Even with four times the weight it carries far more per unit.
        pool[2].weight = 4;
        for _ in 0..10_000 {
            assert_ne!(pick(&pool, &mut rng), Some(20));
        }
    }

    #[test]
    fn a_seeded_rng_gives_the_same_picks() {
        let pool = candidates(&[1, 3, 2, 5, 1]);
        let run = |seed| {
            let mut rng = fastrand::Rng::with_seed(seed);
            (0..100).map(|_| pick(&pool, &mut rng)).collect::<Vec<_>>()
        };
        assert_eq!(run(1234), run(1234));
        assert_ne!(run(1234), run(4321));
    }

    #[test]
    fn extreme_values_do_not_overflow() {
        let mut rng = fastrand::Rng::with_seed(2);
        let pool = [
            Candidate {
                index: 0,
                weight: u32::MAX,
                outstanding: u64::MAX,
            },
            Candidate {
                index: 1,
                weight: 0,
                outstanding: u64::MAX,
            },
        ];
        for _ in 0..100 {
            assert_eq!(pick(&pool, &mut rng), Some(0));
        }
    }
}
