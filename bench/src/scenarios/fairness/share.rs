//! The arithmetic of scenario 9, apart from anything that runs: the order skewed loads
//! arrive in, the contended window and Jain's fairness index over it.

/// The tenant of each arrival when tenant `t` submits `backlogs[t]` jobs over the same
/// stretch of time at an even pace, so that its jobs are spread through the arrivals in
/// proportion to its load: job `k` of tenant `t` arrives at `(k + ½) / backlogs[t]` of the
/// stretch (ties go to the lower tenant index).
pub fn interleaved(backlogs: &[usize]) -> Vec<usize> {
    let mut arrivals: Vec<(f64, usize)> = backlogs
        .iter()
        .enumerate()
        .flat_map(|(tenant, &n)| (0..n).map(move |k| ((k as f64 + 0.5) / n as f64, tenant)))
        .collect();
    arrivals.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    arrivals.into_iter().map(|(_, tenant)| tenant).collect()
}

/// The stretch during which every tenant still had jobs to run, and what each got done in it.
#[derive(Debug, Clone, PartialEq)]
pub struct Contended<T> {
    /// When the first tenant to run out of jobs saw its last one finish.
    pub end: T,
    /// That tenant's index.
    pub first_out: usize,
    /// Jobs of each tenant finished at or before `end`.
    pub completions: Vec<usize>,
}

/// The contended window of a run from each tenant's finish times: it ends when the first
/// tenant's last job finishes, since after that fewer tenants compete and a fair share is
/// no longer an equal one. `None` when a tenant finished nothing.
pub fn contended<T: Ord + Copy>(finishes: &[Vec<T>]) -> Option<Contended<T>> {
    let (first_out, end) = finishes
        .iter()
        .enumerate()
        .map(|(tenant, times)| times.iter().max().map(|&last| (tenant, last)))
        .collect::<Option<Vec<_>>>()?
        .into_iter()
        .min_by_key(|&(_, last)| last)?;
    let completions = finishes
        .iter()
        .map(|times| times.iter().filter(|&&t| t <= end).count())
        .collect();
    Some(Contended {
        end,
        first_out,
        completions,
    })
}

/// Jain's fairness index J = (Σx)² / (n · Σx²): 1 when every share is equal, 1/n when one
/// takes everything. `None` without shares or when they are all zero.
pub fn jain_index(shares: &[f64]) -> Option<f64> {
    let sum: f64 = shares.iter().sum();
    let squares: f64 = shares.iter().map(|x| x * x).sum();
    (squares > 0.0).then(|| sum * sum / (shares.len() as f64 * squares))
}

/// Jain's index of whole counts.
pub fn jain_of_counts(counts: &[usize]) -> Option<f64> {
    jain_index(&counts.iter().map(|&c| c as f64).collect::<Vec<_>>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jain_is_one_for_equal_shares_and_one_over_n_for_a_monopoly() {
        assert_eq!(jain_index(&[25.0; 5]), Some(1.0));
        assert_eq!(jain_index(&[100.0, 0.0, 0.0, 0.0, 0.0]), Some(0.2));
        assert_eq!(jain_index(&[0.0, 0.0]), None);
        assert_eq!(jain_index(&[]), None);
        // (1 + 3)² / (2 · (1 + 9)) = 0.8.
        let j = jain_of_counts(&[1, 3]).expect("shares");
        assert!((j - 0.8).abs() < 1e-12);
        // Shares in proportion to the skewed loads of the scenario.
        let j = jain_of_counts(&[400, 200, 100, 50, 25]).expect("shares");
        assert!((j - 0.5636).abs() < 1e-4, "{j}");
    }

    #[test]
    fn the_window_ends_at_the_first_tenants_last_finish() {
        let finishes = vec![vec![1, 4, 6, 9], vec![2, 5], vec![3, 7, 8]];
        let window = contended(&finishes).expect("every tenant finished something");
        assert_eq!(window.end, 5);
        assert_eq!(window.first_out, 1);
        assert_eq!(window.completions, vec![2, 2, 1]);
    }

    #[test]
    fn a_finish_at_the_end_counts_and_an_idle_tenant_has_no_window() {
        let window = contended(&[vec![3, 3], vec![3, 4]]).expect("window");
        assert_eq!((window.end, window.completions), (3, vec![2, 1]));
        assert_eq!(contended(&[vec![1], vec![]]), None);
        assert_eq!(contended::<u32>(&[]), None);
    }

    #[test]
    fn skewed_arrivals_keep_each_tenants_count_and_spread_it_evenly() {
        let order = interleaved(&[8, 4, 2, 1]);
        assert_eq!(order.len(), 15);
        for (tenant, n) in [8, 4, 2, 1].into_iter().enumerate() {
            assert_eq!(order.iter().filter(|&&t| t == tenant).count(), n);
        }
        // The first half of the arrivals holds about half of each tenant's jobs.
        let half = &order[..8];
        assert_eq!(half.iter().filter(|&&t| t == 0).count(), 4);
        assert_eq!(half.iter().filter(|&&t| t == 1).count(), 2);
        assert_eq!(half.iter().filter(|&&t| t == 2).count(), 1);
        assert_eq!(interleaved(&[2, 2]), vec![0, 1, 0, 1]);
    }
}
