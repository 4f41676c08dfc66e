//! Minimum, median and maximum of a set of measurements.

/// The three figures a benchmark reports.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub min: f64,
    pub median: f64,
    pub max: f64,
}

/// Summarizes `samples`; `None` when there are none (or any is NaN, which has no order).
/// The median of an even count is the mean of the two middle values.
pub fn summarize(samples: &[f64]) -> Option<Summary> {
    if samples.iter().any(|s| s.is_nan()) {
        return None;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let (min, max) = (*sorted.first()?, *sorted.last()?);
    let mid = sorted.len() / 2;
    let median = if sorted.len() % 2 == 1 {
        *sorted.get(mid)?
    } else {
        (*sorted.get(mid - 1)? + *sorted.get(mid)?) / 2.0
    };
    Some(Summary { min, median, max })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odd_count_takes_the_middle_value() {
        assert_eq!(
            summarize(&[30.0, 10.0, 20.0]),
            Some(Summary {
                min: 10.0,
                median: 20.0,
                max: 30.0
            })
        );
    }

    #[test]
    fn even_count_averages_the_two_middle_values() {
        assert_eq!(
            summarize(&[4.0, 1.0, 3.0, 2.0]),
            Some(Summary {
                min: 1.0,
                median: 2.5,
                max: 4.0
            })
        );
    }

    #[test]
    fn single_sample_is_all_three() {
        assert_eq!(
            summarize(&[7.5]),
            Some(Summary {
                min: 7.5,
                median: 7.5,
                max: 7.5
            })
        );
    }

    #[test]
    fn empty_or_nan_gives_none() {
        assert_eq!(summarize(&[]), None);
        assert_eq!(summarize(&[1.0, f64::NAN]), None);
    }
}
