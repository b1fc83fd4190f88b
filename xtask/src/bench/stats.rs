//! Samples and what the report says about them: median, min, max.

/// Repeated measurements of one quantity.
#[derive(Clone, Debug, Default)]
pub struct Sample(pub Vec<f64>);

impl Sample {
    /// Adds one measurement.
    pub fn push(&mut self, v: f64) {
        self.0.push(v);
    }

    fn sorted(&self) -> Vec<f64> {
        let mut v = self.0.clone();
        v.sort_by(f64::total_cmp);
        v
    }

    /// The median (mean of the middle two for an even count); NaN when empty.
    pub fn median(&self) -> f64 {
        let v = self.sorted();
        match v.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        }
    }

    /// The smallest measurement.
    pub fn min(&self) -> f64 {
        self.sorted().first().copied().unwrap_or(f64::NAN)
    }

    /// The largest measurement.
    pub fn max(&self) -> f64 {
        self.sorted().last().copied().unwrap_or(f64::NAN)
    }
}

/// A number with few enough digits to read: 3 significant digits, no exponent.
pub fn fmt(v: f64) -> String {
    if !v.is_finite() {
        return "-".into();
    }
    if v == 0.0 {
        return "0".into();
    }
    let a = v.abs();
    if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// `median (min–max)`.
pub fn spread(s: &Sample) -> String {
    if s.0.len() <= 1 {
        return fmt(s.median());
    }
    format!("{} ({}–{})", fmt(s.median()), fmt(s.min()), fmt(s.max()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_min_max() {
        let s = Sample(vec![3.0, 1.0, 2.0, 10.0]);
        assert_eq!((s.median(), s.min(), s.max()), (2.5, 1.0, 10.0));
        assert_eq!(Sample(vec![5.0, 1.0, 9.0]).median(), 5.0);
        assert!(Sample::default().median().is_nan());
    }

    #[test]
    fn spread_reads_well() {
        assert_eq!(spread(&Sample(vec![1.234, 2.0, 30.0])), "2.00 (1.23–30.0)");
        assert_eq!(spread(&Sample(vec![150.4])), "150");
        assert_eq!(spread(&Sample(vec![0.0, 0.0])), "0 (0–0)");
    }
}
