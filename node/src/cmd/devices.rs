//! `confab devices`: the audio inputs and outputs, with what they offer.

use super::Failure;
use crate::media::device::{self, Caps, DeviceInfo};

pub(super) fn run(json: bool) -> Result<(), Failure> {
    let devices = device::list().map_err(Failure::other)?;
    if json {
        println!(
            "{}",
            serde_json::to_string(&devices).map_err(Failure::other)?
        );
        return Ok(());
    }
    if devices.is_empty() {
        println!("no audio devices");
        return Ok(());
    }
    for line in lines(&devices) {
        println!("{line}");
    }
    Ok(())
}

fn caps_text(c: &Caps) -> String {
    let rates = if c.rates.is_empty() {
        format!("{}–{} Hz", c.min_rate, c.max_rate)
    } else {
        let khz: Vec<String> = c
            .rates
            .iter()
            .map(|r| format!("{}", f64::from(*r) / 1000.0))
            .collect();
        format!("{} kHz", khz.join("/"))
    };
    let channels = match (c.channels.first(), c.channels.last()) {
        (Some(a), Some(b)) if a == b => format!("{a} ch"),
        (Some(a), Some(b)) if c.channels.len() > 4 => format!("{a}–{b} ch"),
        _ => format!(
            "{} ch",
            c.channels
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join("/")
        ),
    };
    format!("{rates}, {channels}, {}", c.formats.join("/"))
}

/// The listing, a device per block: `id`, its description's first line, and one line per
/// direction (`*` marks the default).
fn lines(devices: &[DeviceInfo]) -> Vec<String> {
    let mut out = Vec::new();
    for d in devices {
        out.push(d.id.clone());
        if let Some(first) = d.description.lines().next().filter(|l| *l != d.id) {
            out.push(format!("    {first}"));
        }
        for (kind, caps, default) in [
            ("input ", &d.input, d.default_input),
            ("output", &d.output, d.default_output),
        ] {
            if let Some(c) = caps {
                let mark = if default { "*" } else { " " };
                out.push(format!("  {mark} {kind}  {}", caps_text(c)));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_is_listed_with_its_default_marks_and_formats() {
        let caps = Caps {
            rates: vec![44_100, 48_000],
            min_rate: 1,
            max_rate: 384_000,
            channels: (1..=32).collect(),
            formats: vec!["i16".into(), "f32".into()],
        };
        let d = DeviceInfo {
            id: "default".into(),
            description: "confab test device\nsecond line".into(),
            input: Some(caps.clone()),
            output: Some(Caps {
                channels: vec![2],
                ..caps
            }),
            default_input: true,
            default_output: false,
        };
        assert_eq!(
            lines(&[d]),
            vec![
                "default",
                "    confab test device",
                "  * input   44.1/48 kHz, 1–32 ch, i16/f32",
                "    output  44.1/48 kHz, 2 ch, i16/f32",
            ]
        );
    }
}
