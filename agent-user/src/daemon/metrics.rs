//! Prometheus text exposition (format 0.0.4) of the daemon's metrics: a small renderer,
//! since the daemon has a handful of families and renders them on request.
use std::fmt::Write as _;

/// Metric families in the order they were added.
#[derive(Default)]
pub struct Metrics {
    families: Vec<Family>,
}

struct Family {
    name: &'static str,
    help: &'static str,
    kind: &'static str,
    samples: Vec<(String, f64)>,
}

impl Metrics {
    pub fn counter(&mut self, name: &'static str, help: &'static str, labels: &[(&str, &str)], v: f64) {
        self.add(name, help, "counter", labels, v);
    }

    pub fn gauge(&mut self, name: &'static str, help: &'static str, labels: &[(&str, &str)], v: f64) {
        self.add(name, help, "gauge", labels, v);
    }

    fn add(
        &mut self,
        name: &'static str,
        help: &'static str,
        kind: &'static str,
        labels: &[(&str, &str)],
        v: f64,
    ) {
        let labels = if labels.is_empty() {
            String::new()
        } else {
            let inner: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{}\"", escape(v))).collect();
            format!("{{{}}}", inner.join(","))
        };
        match self.families.iter_mut().find(|f| f.name == name) {
            Some(f) => f.samples.push((labels, v)),
            None => self.families.push(Family { name, help, kind, samples: vec![(labels, v)] }),
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        for f in &self.families {
            let _ = writeln!(out, "# HELP {} {}", f.name, f.help);
            let _ = writeln!(out, "# TYPE {} {}", f.name, f.kind);
            for (labels, v) in &f.samples {
                let _ = writeln!(out, "{}{} {}", f.name, labels, v);
            }
        }
        out
    }
}

/// Label values escape backslash, quote and newline.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_families_once_with_their_samples() {
        let mut m = Metrics::default();
        m.gauge("warden_tasks_active", "Tasks.", &[], 2.0);
        m.counter("warden_task_drops_total", "Drops.", &[("task", "a-1")], 0.0);
        m.counter("warden_task_drops_total", "Drops.", &[("task", "b\"2")], 3.0);
        assert_eq!(
            m.render(),
            "# HELP warden_tasks_active Tasks.\n# TYPE warden_tasks_active gauge\nwarden_tasks_active 2\n\
             # HELP warden_task_drops_total Drops.\n# TYPE warden_task_drops_total counter\n\
             warden_task_drops_total{task=\"a-1\"} 0\nwarden_task_drops_total{task=\"b\\\"2\"} 3\n"
        );
    }
}
