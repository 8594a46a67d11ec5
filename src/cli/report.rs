//! `noduled report SR_FILE`: renders a noduled TID 1500 SR as a readable summary (text on stdout,
//! optionally an HTML page with the key images), for a person without an SR-capable viewer.
//! Patient identity is left out: the summary shows the study and series UIDs only.

use anyhow::Context;
use dicom_dictionary_std::tags;
use noduled::config::Config;
use noduled::dicom::sr::{self, SrFinding};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The SR file (written by `noduled analyze --sr` or the daemon).
    sr_file: PathBuf,
    /// Also write an HTML page to FILE.
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,
    /// Folder of key images (`nodule-N.png` from `analyze --images`) to show in the HTML page.
    #[arg(long, value_name = "DIR")]
    images: Option<PathBuf>,
}

/// What the summary shows, read from the SR.
struct Summary {
    study_uid: String,
    series_description: String,
    content_date: String,
    answer: Option<bool>,
    lung_rads: Option<String>,
    findings: Vec<SrFinding>,
}

fn opt(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{v:.decimals$}"))
}

fn finding_line(k: usize, f: &SrFinding) -> String {
    let [x, y, z] = f.center_xyz;
    format!(
        "nodule {}: at ({x:.1}, {y:.1}, {z:.1}) mm; long {} × short {} mm, mean diameter {} mm, \
         volume {:.0} mm3; HU mean {} max {}; type {}; Lung-RADS {}; p_nodule {:.3}, \
         p_malignant {:.3} ({})",
        k + 1,
        opt(f.long_axis_mm, 1),
        opt(f.short_axis_mm, 1),
        opt(f.mean_diameter_mm, 1),
        f.volume_mm3,
        opt(f.mean_hu, 0),
        opt(f.max_hu, 0),
        f.nodule_type.as_deref().unwrap_or("-"),
        f.lung_rads.as_deref().unwrap_or("-"),
        f.p_nodule,
        f.p_malignant,
        if f.malignant { "malignant" } else { "benign" }
    )
}

fn answer_line(answer: Option<bool>) -> &'static str {
    match answer {
        Some(true) => "Malignant nodules present: yes",
        Some(false) => "Malignant nodules present: no",
        None => "Malignant nodules present: (not stated in the report)",
    }
}

fn text(s: &Summary) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "noduled report ({})", s.series_description);
    let _ = writeln!(out, "study      {}", s.study_uid);
    let _ = writeln!(out, "date       {}", s.content_date);
    let _ = writeln!(out, "findings   {}", s.findings.len());
    for (k, f) in s.findings.iter().enumerate() {
        let _ = writeln!(out, "  {}", finding_line(k, f));
    }
    if let Some(category) = &s.lung_rads {
        let _ = writeln!(out, "Lung-RADS v2022 (baseline, by noduled): {category}");
    }
    let _ = writeln!(out, "{}", answer_line(s.answer));
    out
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn html(s: &Summary, images: Option<&Path>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>noduled report</title>\
         <style>body{{font-family:sans-serif}}td,th{{padding:2px 8px;text-align:right}}\
         th{{background:#ddd}}</style></head><body>"
    );
    let _ = writeln!(out, "<h1>{}</h1>", escape(&s.series_description));
    let _ = writeln!(
        out,
        "<p>Study {} &middot; {}</p>",
        escape(&s.study_uid),
        escape(&s.content_date)
    );
    let _ = writeln!(out, "<h2>{}</h2>", escape(answer_line(s.answer)));
    if let Some(category) = &s.lung_rads {
        let _ = writeln!(
            out,
            "<p>Lung-RADS v2022 (baseline, by noduled): <b>{}</b></p>",
            escape(category)
        );
    }
    let _ = writeln!(
        out,
        "<table><tr><th>#</th><th>x, y, z (mm)</th><th>long (mm)</th><th>short (mm)</th>\
         <th>mean (mm)</th><th>volume (mm³)</th><th>HU mean</th><th>HU max</th><th>type</th>\
         <th>Lung-RADS</th><th>p_nodule</th><th>p_malignant</th></tr>"
    );
    for (k, f) in s.findings.iter().enumerate() {
        let [x, y, z] = f.center_xyz;
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{x:.1}, {y:.1}, {z:.1}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{:.0}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.3}</td>\
             <td>{:.3}</td></tr>",
            k + 1,
            opt(f.long_axis_mm, 1),
            opt(f.short_axis_mm, 1),
            opt(f.mean_diameter_mm, 1),
            f.volume_mm3,
            opt(f.mean_hu, 0),
            opt(f.max_hu, 0),
            escape(f.nodule_type.as_deref().unwrap_or("-")),
            escape(f.lung_rads.as_deref().unwrap_or("-")),
            f.p_nodule,
            f.p_malignant
        );
    }
    let _ = writeln!(out, "</table>");
    if let Some(dir) = images {
        for k in 0..s.findings.len() {
            let png = dir.join(format!("nodule-{}.png", k + 1));
            if png.is_file() {
                let _ = writeln!(
                    out,
                    "<figure><img src=\"{}\" alt=\"nodule {}\"><figcaption>nodule {}</figcaption></figure>",
                    escape(&png.display().to_string()),
                    k + 1,
                    k + 1
                );
            }
        }
    }
    let _ = writeln!(
        out,
        "<p><small>Generated by noduled from an UNVERIFIED machine report: for a radiologist's \
         review, not a diagnosis.</small></p></body></html>"
    );
    out
}

pub fn run(args: Args, _config: &Config) -> anyhow::Result<ExitCode> {
    let object = dicom_object::open_file(&args.sr_file)
        .with_context(|| format!("cannot read {}", args.sr_file.display()))?;
    let findings = sr::read_findings(&object)
        .with_context(|| format!("{} is not a noduled report", args.sr_file.display()))?;
    let get = |tag| {
        object
            .element(tag)
            .ok()
            .and_then(|e| e.to_str().ok())
            .map(|s| s.trim_end_matches(['\0', ' ']).to_string())
            .unwrap_or_default()
    };
    let summary = Summary {
        study_uid: get(tags::STUDY_INSTANCE_UID),
        series_description: get(tags::SERIES_DESCRIPTION),
        content_date: get(tags::CONTENT_DATE),
        answer: sr::read_answer(&object),
        lung_rads: sr::read_lung_rads(&object),
        findings,
    };
    print!("{}", text(&summary));
    if let Some(path) = &args.html {
        std::fs::write(path, html(&summary, args.images.as_deref()))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}
