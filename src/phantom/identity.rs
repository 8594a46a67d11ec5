//! Who the phantom patient is and when they were scanned: names, IDs, dates, times and scanner
//! settings, all drawn from the seed (never from the clock) so the same seed writes the same bytes.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// Patient, study and acquisition identity written into every slice of a phantom series.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhantomIdentity {
    /// `PHANTOM^0001`-style Patient's Name (PN), numbered by the spec's `case_number`.
    pub patient_name: String,
    pub patient_id: String,
    /// YYYYMMDD.
    pub patient_birth_date: String,
    /// `M` or `F`.
    pub patient_sex: String,
    /// `nnnY`.
    pub patient_age: String,
    /// YYYYMMDD.
    pub study_date: String,
    /// HHMMSS.
    pub study_time: String,
    /// HHMMSS, a few minutes after the study time.
    pub acquisition_time: String,
    pub study_id: String,
    pub accession_number: String,
    pub study_description: String,
    pub series_number: u32,
    pub series_description: String,
    pub kvp: u32,
    pub tube_current_ma: u32,
    pub convolution_kernel: String,
}

/// Draws an identity. `thickness_mm` goes into the series description.
pub(crate) fn draw(case_number: u32, thickness_mm: f64, rng: &mut ChaCha8Rng) -> PhantomIdentity {
    // Study between 2015-01-01 and 2024-12-31; patient aged 45–84.
    let study_days = days_from_civil(2015, 1, 1) + rng.random_range(0..3653);
    let (sy, sm, sd) = civil_from_days(study_days);
    let age = rng.random_range(45..85);
    let birth_days = days_from_civil(sy - age, 1, 1) - rng.random_range(1..365);
    let (by, bm, bd) = civil_from_days(birth_days);
    let age = sy - by - i64::from((bm, bd) > (sm, sd));
    let start = rng.random_range(7 * 3600..19 * 3600);
    let acquisition = start + rng.random_range(60..600);
    let kernel = ["LUNG", "STANDARD", "B60f", "YC"][rng.random_range(0..4)];
    let series_number = rng.random_range(2..8);
    PhantomIdentity {
        patient_name: format!("PHANTOM^{case_number:04}"),
        patient_id: format!("NDP{case_number:04}{:08X}", rng.random::<u32>()),
        patient_birth_date: format!("{by:04}{bm:02}{bd:02}"),
        patient_sex: if rng.random_bool(0.5) { "M" } else { "F" }.to_string(),
        patient_age: format!("{age:03}Y"),
        study_date: format!("{sy:04}{sm:02}{sd:02}"),
        study_time: hhmmss(start),
        acquisition_time: hhmmss(acquisition),
        study_id: format!("{}", rng.random_range(1000..100000)),
        accession_number: format!("A{:010}", rng.random_range(0..10_000_000_000u64)),
        study_description: "CT CHEST".to_string(),
        series_number,
        series_description: format!("CHEST {} {kernel}", trim_mm(thickness_mm)),
        kvp: [100, 120, 120, 140][rng.random_range(0..4)],
        tube_current_ma: rng.random_range(80..350),
        convolution_kernel: kernel.to_string(),
    }
}

fn trim_mm(mm: f64) -> String {
    format!("{mm}mm")
}

fn hhmmss(seconds: u32) -> String {
    format!(
        "{:02}{:02}{:02}",
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60
    )
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The inverse of [`days_from_civil`].
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (
        if m <= 2 {
            yoe + era * 400 + 1
        } else {
            yoe + era * 400
        },
        m,
        d,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn civil_round_trip() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(civil_from_days(days_from_civil(2016, 2, 29)), (2016, 2, 29));
        for z in (-40_000..40_000).step_by(37) {
            let (y, m, d) = civil_from_days(z);
            assert_eq!(days_from_civil(y, m, d), z);
        }
    }

    #[test]
    fn identity_is_deterministic_and_well_formed() {
        let a = draw(1, 1.25, &mut ChaCha8Rng::seed_from_u64(5));
        let b = draw(1, 1.25, &mut ChaCha8Rng::seed_from_u64(5));
        assert_eq!(a, b);
        assert_eq!(a.patient_name, "PHANTOM^0001");
        assert_eq!(a.study_date.len(), 8);
        assert_eq!(a.study_time.len(), 6);
        assert!(a.patient_birth_date < a.study_date);
        assert!(a.accession_number.len() <= 16);
        assert!(a.patient_id.len() <= 64);
    }
}
