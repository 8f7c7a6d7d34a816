//! The scaling plot: exits per operation (all vCPUs and the sender's) and
//! guest time per operation against vCPUs (log-log), broadcast and
//! shootdown, off and on, as SVG (plotters' SVG backend: the text is left
//! to the viewer's fonts, so nothing is rasterised here).

use std::path::Path;

use plotters::prelude::*;

use hv_enlightenments::accel::IrqchipMode;

use super::plan::{IRQCHIPS, Op};
use super::stats::Cell;
use crate::scenario::irqchip_name;

/// One line: label, colour, kernel irqchip (dashed, with hollow square
/// markers; the user irqchip's line is solid with filled dots, so that
/// two series that coincide both stay visible), points.
type Series = (String, RGBColor, bool, Vec<(f64, f64)>);

/// Half sides of the markers in pixels: a user-irqchip point is a small
/// filled square, a kernel-irqchip one a larger hollow square, so that one
/// on the other still shows.
const DOT: i32 = 3;
const SQUARE: i32 = 6;

/// The marker of a user (`kernel` false) or kernel irqchip point at `at`.
fn marker<C: Into<ShapeStyle>>(at: (i32, i32), kernel: bool, colour: C) -> Rectangle<(i32, i32)> {
    let style: ShapeStyle = colour.into();
    let (h, style) = if kernel {
        (SQUARE, style.stroke_width(2))
    } else {
        (DOT, style.filled())
    };
    Rectangle::new([(at.0 - h, at.1 - h), (at.0 + h, at.1 + h)], style)
}

fn series(cells: &[Cell], value: fn(&Cell) -> f64) -> Vec<Series> {
    let colours = [
        (Op::Broadcast, false, RGBColor(0xD6, 0x27, 0x28)),
        (Op::Broadcast, true, RGBColor(0x1F, 0x77, 0xB4)),
        (Op::Shootdown, false, RGBColor(0xFF, 0x7F, 0x0E)),
        (Op::Shootdown, true, RGBColor(0x2C, 0xA0, 0x2C)),
    ];
    let mut out = Vec::new();
    for chip in IRQCHIPS {
        for (op, on, colour) in colours {
            let pts: Vec<(f64, f64)> = cells
                .iter()
                .filter(|c| c.op == op.name() && c.irqchip == chip && c.enlightened == on)
                .map(|c| (f64::from(c.vcpus), value(c)))
                // Log axes: zero has no place (shown in the tables).
                .filter(|&(_, y)| y > 0.0)
                .collect();
            if pts.is_empty() {
                continue;
            }
            let label = format!(
                "{} {} ({})",
                op.name(),
                if on { "PV" } else { "native" },
                irqchip_name(chip)
            );
            out.push((label, colour, chip == IrqchipMode::Kernel, pts));
        }
    }
    out
}

fn range(s: &[Series]) -> (f64, f64) {
    let ys = s.iter().flat_map(|(_, _, _, p)| p.iter().map(|&(_, y)| y));
    let (lo, hi) = ys.fold((f64::MAX, f64::MIN), |(lo, hi), y| (lo.min(y), hi.max(y)));
    if lo > hi {
        (0.1, 10.0)
    } else {
        (lo / 2.0, hi * 2.0)
    }
}

fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    y_desc: &str,
    s: &[Series],
) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    let (lo, hi) = range(s);
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d((0.8f64..1300f64).log_scale(), (lo..hi).log_scale())
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc("vCPUs")
        .light_line_style(RGBColor(0xF2, 0xF2, 0xF2))
        .bold_line_style(RGBColor(0xC8, 0xC8, 0xC8))
        .y_desc(y_desc)
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 16))
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| {
            if *y >= 1.0 {
                format!("{y:.0}")
            } else {
                format!("{y:.2}")
            }
        })
        .draw()
        .map_err(e)?;
    for (label, colour, dashed, pts) in s {
        let style = ShapeStyle::from(colour).stroke_width(2);
        let drawn = if *dashed {
            chart.draw_series(DashedLineSeries::new(pts.iter().copied(), 8, 5, style))
        } else {
            chart.draw_series(LineSeries::new(pts.iter().copied(), style))
        };
        let (c, kernel) = (*colour, *dashed);
        let gap = if kernel { 5 } else { 0 };
        // The legend sample is dashed like its line (two strokes with a
        // gap) and carries its marker.
        drawn
            .map_err(e)?
            .label(label.as_str())
            .legend(move |(x, y)| {
                EmptyElement::at((x, y))
                    + PathElement::new(vec![(0, 0), (7, 0)], c.stroke_width(2))
                    + PathElement::new(vec![(7 + gap, 0), (19, 0)], c.stroke_width(2))
                    + marker((10, 0), kernel, c)
            });
        chart
            .draw_series(
                pts.iter()
                    .map(|&p| EmptyElement::at(p) + marker((0, 0), kernel, *colour)),
            )
            .map_err(e)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font(("sans-serif", 13))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(e)
}

/// Draws the scaling plot of `cells` to `path` (SVG).
pub fn scaling(cells: &[Cell], path: &Path) -> Result<(), String> {
    let root = SVGBackend::new(path, (1800, 600)).into_drawing_area();
    let e = |e: DrawingAreaErrorKind<_>| format!("{}: {e}", path.display());
    root.fill(&WHITE).map_err(e)?;
    let panels = root.split_evenly((1, 3));
    panel(
        &panels[0],
        "VM exits per operation (all vCPUs)",
        "exits / op",
        &series(cells, Cell::plot_exits),
    )?;
    panel(
        &panels[1],
        "Sender (vCPU 0) exits per operation",
        "exits / op",
        &series(cells, Cell::plot_sender_exits),
    )?;
    panel(
        &panels[2],
        "Guest time per operation",
        "us / op (guest TSC)",
        &series(cells, |c| c.guest_ns_per_op.median / 1000.0),
    )?;
    root.present().map_err(e)
}
