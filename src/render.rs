//! Key images: one axial CT slice per finding, in a lung window, with the finding outlined and
//! labelled, so a person (or a PACS without SR display) sees what was found without a viewer.
//! [`render_key_image`] makes the RGB pixels; [`write_png`] saves them; the DICOM Secondary Capture
//! wrapper is [`crate::dicom::keyimage`].
//!
//! The picture: HU mapped to grey through a window (default lung window, level −600, width 1500),
//! the region's outline drawn in yellow on the pixels just outside it (so the nodule itself stays
//! visible), the finding's number beside it, and a caption line at the top. Text uses a built-in
//! 5×7 bitmap font (digits, capitals and a few signs; lower case is drawn as capitals), drawn at
//! twice its size with a dark shadow so it reads on any background.

use crate::pipeline::Finding;
use ndarray::ArrayView3;
use std::collections::HashSet;
use std::path::Path;

/// A display window in HU.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Window {
    pub level: f32,
    pub width: f32,
}

impl Window {
    /// The usual lung window: level −600 HU, width 1500 HU.
    pub const LUNG: Window = Window {
        level: -600.0,
        width: 1500.0,
    };

    fn grey(&self, hu: f32) -> u8 {
        let lo = self.level - self.width / 2.0;
        let v = ((hu - lo) / self.width).clamp(0.0, 1.0) * 255.0;
        v.round() as u8
    }
}

/// An 8-bit RGB picture, rows top to bottom, pixels interleaved (R, G, B).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbImage {
    pub width: usize,
    pub height: usize,
    pub rgb: Vec<u8>,
}

impl RgbImage {
    fn put(&mut self, row: isize, col: isize, color: [u8; 3]) {
        if row >= 0 && col >= 0 && (row as usize) < self.height && (col as usize) < self.width {
            let p = (row as usize * self.width + col as usize) * 3;
            self.rgb[p..p + 3].copy_from_slice(&color);
        }
    }

    /// The (R, G, B) of one pixel, `None` outside the image.
    pub fn pixel(&self, row: usize, col: usize) -> Option<[u8; 3]> {
        if row < self.height && col < self.width {
            let p = (row * self.width + col) * 3;
            Some([self.rgb[p], self.rgb[p + 1], self.rgb[p + 2]])
        } else {
            None
        }
    }
}

/// Outline colour (yellow).
pub const OUTLINE: [u8; 3] = [255, 220, 0];
/// Text colour (yellow) and its shadow.
const TEXT: [u8; 3] = [255, 220, 0];
const SHADOW: [u8; 3] = [0, 0, 0];
/// Text magnification.
const SCALE: isize = 2;

/// What to draw on one key image.
#[derive(Debug, Clone, PartialEq)]
pub struct Annotation {
    /// The finding's pixels (row, column) on this slice.
    pub pixels: Vec<[usize; 2]>,
    /// Short label beside the outline, e.g. `1`.
    pub label: String,
    /// Caption lines at the top of the image.
    pub caption: Vec<String>,
}

/// Slice `slice` of `hu` in `window` with `annotation` drawn; `None` when the slice does not exist.
pub fn render_key_image(
    hu: ArrayView3<'_, f32>,
    slice: usize,
    window: Window,
    annotation: &Annotation,
) -> Option<RgbImage> {
    let shape = hu.shape();
    if slice >= shape[0] || shape[1] == 0 || shape[2] == 0 {
        return None;
    }
    let (height, width) = (shape[1], shape[2]);
    let mut image = RgbImage {
        width,
        height,
        rgb: vec![0; width * height * 3],
    };
    for r in 0..height {
        for c in 0..width {
            let g = window.grey(hu[[slice, r, c]]);
            let p = (r * width + c) * 3;
            image.rgb[p..p + 3].copy_from_slice(&[g, g, g]);
        }
    }
    // Outline: pixels 8-adjacent to the region but not in it.
    let inside: HashSet<[usize; 2]> = annotation.pixels.iter().copied().collect();
    let mut top_right: Option<(isize, isize)> = None;
    for &[r, c] in &annotation.pixels {
        for dr in -1isize..=1 {
            for dc in -1isize..=1 {
                let (nr, nc) = (r as isize + dr, c as isize + dc);
                if nr < 0 || nc < 0 || inside.contains(&[nr as usize, nc as usize]) {
                    continue;
                }
                image.put(nr, nc, OUTLINE);
            }
        }
        let (r, c) = (r as isize, c as isize);
        top_right = Some(match top_right {
            None => (r, c),
            Some((tr, tc)) => (tr.min(r), tc.max(c)),
        });
    }
    if let Some((r, c)) = top_right {
        let glyph_h = 7 * SCALE;
        let row = (r - glyph_h - 2).max(0);
        let col = (c + 4).min(width as isize - text_width(&annotation.label));
        draw_text(&mut image, row, col.max(0), &annotation.label);
    }
    // Small images (a 256-pixel phantom) get the caption wrapped rather than cut off.
    let max_chars = ((width as isize - 8) / (6 * SCALE)).max(1) as usize;
    let lines = annotation
        .caption
        .iter()
        .flat_map(|line| wrap_words(line, max_chars));
    for (k, line) in lines.enumerate() {
        draw_text(&mut image, 4 + k as isize * 9 * SCALE, 4, &line);
    }
    Some(image)
}

/// Splits `text` into lines of at most `max_chars` characters: whole phrases (the parts between
/// double spaces) where they fit, else words (a longer word stays whole on its own line).
fn wrap_words(text: &str, max_chars: usize) -> Vec<String> {
    let mut units: Vec<(String, &str)> = Vec::new();
    for phrase in text.split("  ").filter(|p| !p.trim().is_empty()) {
        if phrase.chars().count() <= max_chars {
            units.push((phrase.trim().to_string(), "  "));
        } else {
            units.extend(
                phrase
                    .split(' ')
                    .filter(|w| !w.is_empty())
                    .map(|w| (w.to_string(), " ")),
            );
        }
    }
    let mut lines = Vec::new();
    let mut current = String::new();
    for (unit, separator) in units {
        if current.is_empty() {
            current = unit;
        } else if current.chars().count() + separator.len() + unit.chars().count() <= max_chars {
            current.push_str(separator);
            current.push_str(&unit);
        } else {
            lines.push(std::mem::replace(&mut current, unit));
        }
    }
    if !current.is_empty() {
        lines.push(current);
    }
    lines
}

/// One-line description of finding number `number` (1-based), e.g. `nodule 1: 12.3 mm solid,
/// Lung-RADS 4A, p_malignant 0.84`: the caption (in capitals) and the DICOM description.
pub fn describe_finding(finding: &Finding, number: usize) -> String {
    let mut s = format!("nodule {number}:");
    match &finding.measurements {
        Some(m) => s.push_str(&format!(" {:.1} mm {}", m.mean_diameter_mm, m.nodule_type)),
        None => s.push_str(&format!(" {:.1} mm", finding.diameter_mm)),
    }
    if let Some(category) = finding.lung_rads {
        s.push_str(&format!(", Lung-RADS {category}"));
    }
    s.push_str(&format!(", p_malignant {:.2}", finding.p_malignant));
    s
}

/// The key image of finding number `number` (1-based): the axial slice nearest its centre with
/// its region outlined (the slice of its long axis when the region misses the centre slice; a
/// circle of its diameter when it has no region). Returns the slice index and the picture.
pub fn finding_key_image(
    hu: ArrayView3<'_, f32>,
    spacing_xyz: [f64; 3],
    finding: &Finding,
    number: usize,
) -> Option<(usize, RgbImage)> {
    let slices = hu.shape()[0];
    if slices == 0 {
        return None;
    }
    let centre = (finding.center_irc[0].round().max(0.0) as usize).min(slices - 1);
    let on = |slice: usize| -> Vec<[usize; 2]> {
        finding
            .region
            .iter()
            .filter(|v| v[0] == slice)
            .map(|v| [v[1], v[2]])
            .collect()
    };
    let mut slice = centre;
    let mut pixels = on(slice);
    if pixels.is_empty() {
        if let Some(m) = &finding.measurements {
            slice = m.long_axis.slice.min(slices - 1);
            pixels = on(slice);
        }
    }
    if pixels.is_empty() {
        // A disc of the finding's diameter around its centre.
        let r_mm = finding.diameter_mm.max(1.0) / 2.0;
        let (rows, cols) = (hu.shape()[1], hu.shape()[2]);
        let [cr, cc] = [finding.center_irc[1], finding.center_irc[2]];
        for r in 0..rows {
            for c in 0..cols {
                let dy = (r as f64 - cr) * spacing_xyz[1];
                let dx = (c as f64 - cc) * spacing_xyz[0];
                if dx * dx + dy * dy <= r_mm * r_mm {
                    pixels.push([r, c]);
                }
            }
        }
    }
    let mut first = format!("NODULE {number}");
    match &finding.measurements {
        Some(m) => first.push_str(&format!(
            "  {:.1} MM {}",
            m.mean_diameter_mm,
            m.nodule_type.as_str().to_uppercase()
        )),
        None => first.push_str(&format!("  {:.1} MM", finding.diameter_mm)),
    }
    let mut second = String::new();
    if let Some(category) = finding.lung_rads {
        second.push_str(&format!("LUNG-RADS {category}  "));
    }
    second.push_str(&format!("P MALIGNANT {:.2}", finding.p_malignant));
    let annotation = Annotation {
        pixels,
        label: number.to_string(),
        caption: vec![first, second],
    };
    let image = render_key_image(hu, slice, Window::LUNG, &annotation)?;
    Some((slice, image))
}

/// Width in pixels of `text` as [`draw_text`] draws it.
pub fn text_width(text: &str) -> isize {
    text.chars().count() as isize * 6 * SCALE
}

/// Draws `text` with its top-left corner at (row, col), with a one-pixel shadow.
pub fn draw_text(image: &mut RgbImage, row: isize, col: isize, text: &str) {
    for (color, offset) in [(SHADOW, 1isize), (TEXT, 0)] {
        for (k, ch) in text.chars().enumerate() {
            let rows = glyph(ch);
            let x0 = col + k as isize * 6 * SCALE + offset;
            for (gr, bits) in rows.iter().enumerate() {
                for gc in 0..5 {
                    if bits & (0b10000 >> gc) != 0 {
                        for sr in 0..SCALE {
                            for sc in 0..SCALE {
                                image.put(
                                    row + offset + gr as isize * SCALE + sr,
                                    x0 + gc * SCALE + sc,
                                    color,
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The 5×7 glyph of `ch` (rows top to bottom, bit 4 = left column); unknown characters are a box.
fn glyph(ch: char) -> [u8; 7] {
    match ch.to_ascii_uppercase() {
        '0' => [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
        '1' => [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
        '2' => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
        '3' => [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
        '4' => [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
        '5' => [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
        '6' => [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
        '7' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
        '9' => [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
        'A' => [0x0E, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'B' => [0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E],
        'C' => [0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E],
        'D' => [0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C],
        'E' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F],
        'F' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10],
        'G' => [0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F],
        'H' => [0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'I' => [0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E],
        'J' => [0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C],
        'K' => [0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11],
        'L' => [0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F],
        'M' => [0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11],
        'N' => [0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11],
        'O' => [0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'P' => [0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10],
        'Q' => [0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D],
        'R' => [0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11],
        'S' => [0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E],
        'T' => [0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04],
        'U' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'V' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04],
        'W' => [0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A],
        'X' => [0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11],
        'Y' => [0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04],
        'Z' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F],
        '.' => [0x00, 0x00, 0x00, 0x00, 0x00, 0x0C, 0x0C],
        ',' => [0x00, 0x00, 0x00, 0x00, 0x0C, 0x04, 0x08],
        '-' => [0x00, 0x00, 0x00, 0x1F, 0x00, 0x00, 0x00],
        '+' => [0x00, 0x04, 0x04, 0x1F, 0x04, 0x04, 0x00],
        ':' => [0x00, 0x0C, 0x0C, 0x00, 0x0C, 0x0C, 0x00],
        '=' => [0x00, 0x00, 0x1F, 0x00, 0x1F, 0x00, 0x00],
        '#' => [0x0A, 0x0A, 0x1F, 0x0A, 0x1F, 0x0A, 0x0A],
        '/' => [0x00, 0x01, 0x02, 0x04, 0x08, 0x10, 0x00],
        '%' => [0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03],
        '(' => [0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02],
        ')' => [0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08],
        ' ' => [0; 7],
        _ => [0x1F, 0x11, 0x11, 0x11, 0x11, 0x11, 0x1F],
    }
}

/// What can go wrong writing a PNG.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("cannot write {path}: {message}")]
    Write {
        path: std::path::PathBuf,
        message: String,
    },
}

/// Encodes `image` as an 8-bit RGB PNG.
pub fn encode_png(image: &RgbImage) -> Result<Vec<u8>, png::EncodingError> {
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut out, image.width as u32, image.height as u32);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header()?;
        writer.write_image_data(&image.rgb)?;
        writer.finish()?;
    }
    Ok(out)
}

/// Writes `image` to `path` as PNG.
pub fn write_png(image: &RgbImage, path: &Path) -> Result<(), RenderError> {
    let failed = |message: String| RenderError::Write {
        path: path.to_path_buf(),
        message,
    };
    let bytes = encode_png(image).map_err(|e| failed(e.to_string()))?;
    std::fs::write(path, bytes).map_err(|e| failed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array3;

    #[test]
    fn captions_wrap_at_phrases_then_words_to_fit() {
        assert_eq!(
            wrap_words("NODULE 1  15.1 MM SOLID", 13),
            vec!["NODULE 1", "15.1 MM SOLID"]
        );
        assert_eq!(
            wrap_words("LUNG-RADS 4B  P MALIGNANT 0.85", 20),
            vec!["LUNG-RADS 4B", "P MALIGNANT 0.85"]
        );
        assert_eq!(
            wrap_words("NODULE 1  15.1 MM", 40),
            vec!["NODULE 1  15.1 MM"]
        );
        assert_eq!(wrap_words("ABCDEFGHIJ", 4), vec!["ABCDEFGHIJ"]);
        assert_eq!(
            wrap_words("P MALIGNANT 0.85", 12),
            vec!["P MALIGNANT", "0.85"]
        );
    }

    #[test]
    fn outline_surrounds_the_region_and_text_is_drawn() {
        let mut hu = Array3::from_elem((2, 64, 64), -850.0f32);
        let mut pixels = Vec::new();
        for r in 30..34 {
            for c in 30..34 {
                hu[[1, r, c]] = 40.0;
                pixels.push([r, c]);
            }
        }
        let a = Annotation {
            pixels,
            label: "1".into(),
            caption: vec!["AB".into()],
        };
        let img = render_key_image(hu.view(), 1, Window::LUNG, &a).expect("rendered");
        assert_eq!(
            (img.width, img.height, img.rgb.len()),
            (64, 64, 64 * 64 * 3)
        );
        assert_eq!(img.pixel(29, 29), Some(OUTLINE));
        assert_eq!(img.pixel(34, 31), Some(OUTLINE));
        let g = Window::LUNG.grey(40.0);
        assert_eq!(
            img.pixel(31, 31),
            Some([g, g, g]),
            "the nodule stays visible"
        );
        assert_eq!(
            img.pixel(50, 5),
            Some([85, 85, 85]),
            "-850 HU in the lung window"
        );
        // Caption "A" top row at (4, 4): glyph row 0 = 0x0E, so column 4+2*1 is lit.
        assert_eq!(img.pixel(4, 6), Some(TEXT));
        assert!(render_key_image(hu.view(), 2, Window::LUNG, &a).is_none());
        let png = encode_png(&img).expect("encodes");
        assert_eq!(&png[1..4], b"PNG");
    }
}
