//! How long starting took, per node, for `-v`: when the agent pod's create request was answered,
//! when the pod ran, when the agent answered through its port-forward, and when its first
//! answer to the command came (the first event of a trace, the flow table of `flows`), each
//! measured from the start of the command. Each step is kept the first time it is reached;
//! with `-v` the node's steps so far are said when its agent is ready and again when its first
//! answer comes.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A step of starting an agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Step {
    /// The API server accepted the agent pod.
    PodCreated,
    /// The pod's agent container runs.
    PodRunning,
    /// The agent answered through the port-forward (a connection is ready).
    AgentReady,
    /// The first answer to the command (an event, a flow table).
    FirstAnswer,
}

impl Step {
    /// Every step, in order.
    pub const ALL: [Step; 4] = [
        Step::PodCreated,
        Step::PodRunning,
        Step::AgentReady,
        Step::FirstAnswer,
    ];

    /// As `-v` names it.
    pub fn name(self) -> &'static str {
        match self {
            Step::PodCreated => "pod create sent",
            Step::PodRunning => "pod Running",
            Step::AgentReady => "port-forward ready",
            Step::FirstAnswer => "first answer",
        }
    }
}

/// The steps of every node, from one start.
#[derive(Debug)]
pub struct Timing {
    start: Instant,
    verbose: bool,
    nodes: Mutex<BTreeMap<String, BTreeMap<Step, Duration>>>,
}

impl Timing {
    /// Measures from now; `verbose` says node lines on stderr.
    pub fn new(verbose: bool) -> Timing {
        Timing {
            start: Instant::now(),
            verbose,
            nodes: Mutex::default(),
        }
    }

    /// Records that `node` reached `step` now (unless it did before). Reaching
    /// [`Step::AgentReady`] or [`Step::FirstAnswer`] says the node's line when verbose.
    pub fn mark(&self, node: &str, step: Step) {
        let elapsed = self.start.elapsed();
        let line = {
            let mut nodes = self.nodes.lock().expect("timing lock");
            let steps = nodes.entry(node.to_string()).or_default();
            if steps.contains_key(&step) {
                return;
            }
            steps.insert(step, elapsed);
            matches!(step, Step::AgentReady | Step::FirstAnswer).then(|| line(node, steps))
        };
        if let Some(line) = line.filter(|_| self.verbose) {
            crate::progress::info(&line);
        }
    }

    /// [`Step::FirstAnswer`] for every node in `nodes`.
    pub fn first_answer_all(&self, nodes: &[String]) {
        for n in nodes {
            self.mark(n, Step::FirstAnswer);
        }
    }

    /// The steps `node` reached so far, in order.
    pub fn steps(&self, node: &str) -> Vec<(Step, Duration)> {
        self.nodes
            .lock()
            .expect("timing lock")
            .get(node)
            .map(|s| s.iter().map(|(k, v)| (*k, *v)).collect())
            .unwrap_or_default()
    }
}

impl Default for Timing {
    fn default() -> Self {
        Timing::new(false)
    }
}

/// `timing node-1: pod create sent 0.041s, pod Running 0.412s, ...` (steps not reached are left
/// out: an agent given with `--agent` has no pod).
pub fn line(node: &str, steps: &BTreeMap<Step, Duration>) -> String {
    let parts: Vec<String> = Step::ALL
        .iter()
        .filter_map(|s| {
            steps
                .get(s)
                .map(|d| format!("{} {:.3}s", s.name(), d.as_secs_f64()))
        })
        .collect();
    format!("timing {node}: {}", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_kept_once_in_order_and_read_as_one_line() {
        let t = Timing::new(false);
        t.mark("n1", Step::AgentReady);
        t.mark("n1", Step::PodCreated);
        let first = t.steps("n1");
        t.mark("n1", Step::PodCreated);
        assert_eq!(t.steps("n1"), first, "a step is kept the first time");
        let names: Vec<Step> = first.iter().map(|(s, _)| *s).collect();
        assert_eq!(names, vec![Step::PodCreated, Step::AgentReady]);
        assert!(t.steps("n2").is_empty());
        let steps: BTreeMap<Step, Duration> = [
            (Step::PodCreated, Duration::from_millis(41)),
            (Step::PodRunning, Duration::from_millis(412)),
            (Step::AgentReady, Duration::from_millis(800)),
            (Step::FirstAnswer, Duration::from_millis(1234)),
        ]
        .into_iter()
        .collect();
        assert_eq!(
            line("node-1", &steps),
            "timing node-1: pod create sent 0.041s, pod Running 0.412s, port-forward ready 0.800s, first answer 1.234s"
        );
    }
}
