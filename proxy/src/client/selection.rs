//! Group choice with hysteresis, as a pure state machine fed one probe round at a time.
//!
//! - With no current group, or when the current group has no healthy proxy, the best healthy group
//!   is chosen at once (failover does not wait).
//! - Otherwise another group replaces the current one only when it is *clearly* better, that is
//!   its RTT is below `ratio` x the current RTT and at least `min_gap` lower, in `rounds`
//!   consecutive probe rounds. One good or bad round does not make the choice flap.

use std::time::Duration;

#[derive(Debug, Clone, Copy)]
pub struct Hysteresis {
    /// Consecutive rounds a challenger must be clearly better before the switch.
    pub rounds: u32,
    /// A challenger's RTT must be below `ratio * current`.
    pub ratio: f64,
    /// ... and at least this much lower.
    pub min_gap: Duration,
}

impl Default for Hysteresis {
    fn default() -> Self {
        Self { rounds: 3, ratio: 0.8, min_gap: Duration::from_millis(1) }
    }
}

/// One group's result in a probe round: `None` when it has no healthy proxy.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupRtt {
    pub name: String,
    pub rtt: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// First choice, or a failover away from a group with no healthy proxy.
    Immediate { from: Option<String>, to: String },
    /// A clearly better group after `rounds` rounds.
    Better { from: String, to: String, rounds: u32 },
    /// No group has a healthy proxy.
    NoneHealthy { from: Option<String> },
}

#[derive(Debug, Default, Clone)]
pub struct Selector {
    cfg: Hysteresis,
    current: Option<String>,
    challenger: Option<(String, u32)>,
}

impl Selector {
    pub fn new(cfg: Hysteresis) -> Self {
        Self { cfg, current: None, challenger: None }
    }

    pub fn current(&self) -> Option<&str> {
        self.current.as_deref()
    }

    /// Feeds one round; returns the change made, if any.
    pub fn observe(&mut self, round: &[GroupRtt]) -> Option<Change> {
        let best = round
            .iter()
            .filter_map(|g| g.rtt.map(|r| (g, r)))
            .min_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.name.cmp(&b.0.name)));
        let current_rtt = self.current.as_ref().and_then(|c| round.iter().find(|g| &g.name == c)).and_then(|g| g.rtt);
        let Some((best, best_rtt)) = best else {
            self.challenger = None;
            return self.current.take().map(|from| Change::NoneHealthy { from: Some(from) });
        };
        let Some(current_rtt) = current_rtt else {
            self.challenger = None;
            let from = self.current.replace(best.name.clone());
            return Some(Change::Immediate { from, to: best.name.clone() });
        };
        let current = self.current.clone().unwrap_or_default();
        let clearly_better = best.name != current
            && best_rtt.as_secs_f64() < current_rtt.as_secs_f64() * self.cfg.ratio
            && current_rtt.saturating_sub(best_rtt) >= self.cfg.min_gap;
        if !clearly_better {
            self.challenger = None;
            return None;
        }
        let count = match &self.challenger {
            Some((name, n)) if name == &best.name => n + 1,
            _ => 1,
        };
        if count >= self.cfg.rounds {
            self.challenger = None;
            self.current = Some(best.name.clone());
            Some(Change::Better { from: current, to: best.name.clone(), rounds: count })
        } else {
            self.challenger = Some((best.name.clone(), count));
            None
        }
    }

    /// The order in which to try groups: the chosen one, the other healthy ones by RTT, then the
    /// unhealthy ones (their proxies may be back before the next probe round).
    pub fn order(&self, round: &[GroupRtt]) -> Vec<String> {
        let mut healthy: Vec<&GroupRtt> = round.iter().filter(|g| g.rtt.is_some()).collect();
        healthy.sort_by(|a, b| a.rtt.cmp(&b.rtt).then_with(|| a.name.cmp(&b.name)));
        let mut out: Vec<String> = Vec::with_capacity(round.len());
        if let Some(c) = &self.current
            && round.iter().any(|g| &g.name == c)
        {
            out.push(c.clone());
        }
        for g in healthy {
            if !out.contains(&g.name) {
                out.push(g.name.clone());
            }
        }
        for g in round {
            if !out.contains(&g.name) {
                out.push(g.name.clone());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(a: Option<u64>, b: Option<u64>) -> Vec<GroupRtt> {
        vec![
            GroupRtt { name: "a".into(), rtt: a.map(Duration::from_millis) },
            GroupRtt { name: "b".into(), rtt: b.map(Duration::from_millis) },
        ]
    }

    #[test]
    fn picks_lowest_rtt_first_and_switches_only_after_n_clearly_better_rounds() {
        let mut s = Selector::new(Hysteresis::default());
        assert_eq!(s.observe(&round(Some(4), Some(80))), Some(Change::Immediate { from: None, to: "a".into() }));
        // A gets worse than B, but one round alone and a marginal difference do not switch.
        assert_eq!(s.observe(&round(Some(240), Some(80))), None);
        assert_eq!(s.observe(&round(Some(85), Some(80))), None);
        assert_eq!(s.observe(&round(Some(240), Some(80))), None);
        assert_eq!(s.observe(&round(Some(240), Some(80))), None);
        assert_eq!(
            s.observe(&round(Some(240), Some(80))),
            Some(Change::Better { from: "a".into(), to: "b".into(), rounds: 3 })
        );
        assert_eq!(s.current(), Some("b"));
        assert_eq!(s.order(&round(Some(240), Some(80))), vec!["b".to_owned(), "a".to_owned()]);
    }

    #[test]
    fn fails_over_at_once_when_the_current_group_is_down() {
        let mut s = Selector::new(Hysteresis::default());
        s.observe(&round(Some(4), Some(80)));
        assert_eq!(
            s.observe(&round(None, Some(80))),
            Some(Change::Immediate { from: Some("a".into()), to: "b".into() })
        );
        assert_eq!(s.observe(&round(None, None)), Some(Change::NoneHealthy { from: Some("b".into()) }));
        assert_eq!(s.order(&round(None, None)), vec!["a".to_owned(), "b".to_owned()]);
        assert_eq!(s.observe(&round(Some(4), None)), Some(Change::Immediate { from: None, to: "a".into() }));
    }

    #[test]
    fn does_not_flap_on_alternating_rounds() {
        let mut s = Selector::new(Hysteresis::default());
        s.observe(&round(Some(10), Some(12)));
        for i in 0..20 {
            let r = if i % 2 == 0 { round(Some(30), Some(12)) } else { round(Some(10), Some(12)) };
            assert_eq!(s.observe(&r), None, "round {i}");
        }
        assert_eq!(s.current(), Some("a"));
    }
}
