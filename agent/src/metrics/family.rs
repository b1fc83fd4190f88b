//! Metric families as plain data and their Prometheus text encoding (`prometheus-client`):
//! the bottom of the metrics stack, importing no sibling.

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, NoLabelSet},
    metrics::MetricType,
    registry::Registry,
};

/// A sample's value: counts stay integers, ratios and physical units are floats.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value {
    /// A count.
    Int(u64),
    /// A ratio, watts, degrees, ...
    Float(f64),
}

/// One labelled value.
pub type Sample = (Vec<(&'static str, String)>, Value);

/// One metric family: name (without `_total`, which the encoder adds to counters), help, type,
/// samples. A family without samples still prints its `HELP` and `TYPE` lines.
pub struct Family {
    /// `orb8_...`.
    pub name: &'static str,
    /// One sentence.
    pub help: &'static str,
    /// Counter or gauge.
    pub kind: MetricType,
    /// Its series.
    pub samples: Vec<Sample>,
}

impl Family {
    /// A gauge.
    pub fn gauge(name: &'static str, help: &'static str, samples: Vec<Sample>) -> Family {
        Family {
            name,
            help,
            kind: MetricType::Gauge,
            samples,
        }
    }

    /// A counter.
    pub fn counter(name: &'static str, help: &'static str, samples: Vec<Sample>) -> Family {
        Family {
            name,
            help,
            kind: MetricType::Counter,
            samples,
        }
    }
}

/// The Prometheus text exposition (format 0.0.4) of `families`, in their order.
pub fn encode(families: Vec<Family>) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Encoded(families)));
    let mut out = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)
        .expect("writing to a String cannot fail");
    out
}

struct Encoded(Vec<Family>);

impl std::fmt::Debug for Encoded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Encoded")
    }
}

impl Collector for Encoded {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for fam in &self.0 {
            let mut m = encoder.encode_descriptor(fam.name, fam.help, None, fam.kind)?;
            for (labels, v) in &fam.samples {
                let mut s = m.encode_family(labels)?;
                match (fam.kind, v) {
                    (MetricType::Counter, Value::Int(n)) => {
                        s.encode_counter::<NoLabelSet, _, u64>(n, None)?
                    }
                    (MetricType::Counter, Value::Float(x)) => {
                        s.encode_counter::<NoLabelSet, _, f64>(x, None)?
                    }
                    (_, Value::Int(n)) => s.encode_gauge(n)?,
                    (_, Value::Float(x)) => s.encode_gauge(x)?,
                }
            }
        }
        Ok(())
    }
}
