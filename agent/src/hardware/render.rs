//! Pure: an [`Inventory`] as the summary `fleet-agent inventory` prints, for an engineer
//! meeting a new robot: the host first, then one section per kind of hardware present, and for
//! each serial port and camera the item that asks for it under `x-fleet: hardware:` in a
//! Compose file (the forms `fleet-server/src/compose/fleet.rs` accepts).

use fleet_proto::inventory::{SerialPort, VideoDevice};
use fleet_proto::release::GpuKind;
use fleet_proto::Inventory;

/// The inventory as aligned, sectioned text (ends with a newline).
pub fn render_inventory(inv: &Inventory) -> String {
    let mut out = Vec::new();
    let engine = match &inv.engine {
        Some(e) => format!("{} {} (API {})", e.name, e.version, e.api_version),
        None => "none".to_owned(),
    };
    let os = if inv.os.pretty_name.is_empty() {
        format!("{} {}", inv.os.id, inv.os.version).trim().to_owned()
    } else {
        inv.os.pretty_name.clone()
    };
    let cpus = match inv.cpus.model.as_str() {
        "" => inv.cpus.count.to_string(),
        model => format!("{} ({model})", inv.cpus.count),
    };
    let isolated = if inv.cpus.isolated.is_empty() { "none" } else { &inv.cpus.isolated };
    let mut head = vec![
        row([
            "host",
            &[
                inv.arch.as_str(),
                &os,
                &format!("kernel {}", inv.kernel),
                &format!("engine {engine}"),
            ]
            .join(", "),
        ]),
        row([
            "cpus",
            &format!("{cpus}, online {}, isolated {isolated}", or_dash(&inv.cpus.online)),
        ]),
        row(["memory", &bytes(inv.memory_bytes)]),
    ];
    for d in &inv.disks {
        head.push(row([
            "disk",
            &format!("{}  {} free of {}", d.mount, bytes(d.available_bytes), bytes(d.total_bytes)),
        ]));
    }
    out.extend(table(&head));

    if !inv.serial.is_empty() {
        section(&mut out, "serial ports (compose: an item of x-fleet: hardware:)");
        let items: Vec<_> =
            inv.serial.iter().map(|p| (p.dev_path.clone(), serial_lines(p))).collect();
        out.extend(items_block(&items));
    }
    if !inv.gpio.is_empty() {
        section(&mut out, "gpio chips");
        let rows: Vec<_> = inv
            .gpio
            .iter()
            .map(|c| row([&c.name, or_dash(&c.label), &format!("{} lines", c.lines)]))
            .collect();
        out.extend(indent(table(&rows)));
    }
    if !inv.i2c.is_empty() {
        section(&mut out, "i2c buses");
        let rows: Vec<_> = inv
            .i2c
            .iter()
            .map(|b| row([&format!("/dev/i2c-{}", b.bus), or_dash(&b.name)]))
            .collect();
        out.extend(indent(table(&rows)));
    }
    if !inv.spi.is_empty() {
        section(&mut out, "spi devices");
        let rows: Vec<_> = inv
            .spi
            .iter()
            .map(|d| {
                row([
                    &format!("/dev/spidev{}.{}", d.bus, d.chip_select),
                    &format!("bus {}, chip select {}", d.bus, d.chip_select),
                ])
            })
            .collect();
        out.extend(indent(table(&rows)));
    }
    if !inv.video.is_empty() {
        section(&mut out, "video (compose: an item of x-fleet: hardware:)");
        let items: Vec<_> =
            inv.video.iter().map(|v| (v.dev_path.clone(), video_lines(v))).collect();
        out.extend(items_block(&items));
    }
    if !inv.can.is_empty() {
        section(&mut out, "can interfaces");
        out.extend(inv.can.iter().map(|c| format!("  {c}")));
    }
    if !inv.gpus.is_empty() {
        section(&mut out, "gpus");
        let rows: Vec<_> = inv
            .gpus
            .iter()
            .map(|g| {
                let kind = match g.kind {
                    GpuKind::Nvidia => "nvidia",
                    GpuKind::Jetson => "jetson",
                    GpuKind::Dri => "dri",
                };
                let driver = g.driver_version.as_deref().map(|v| format!("driver {v}"));
                row([kind, &g.id, or_dash(&g.model), driver.as_deref().unwrap_or("")])
            })
            .collect();
        out.extend(indent(table(&rows)));
    }
    if !inv.accelerators.is_empty() {
        section(&mut out, "accelerators");
        let rows: Vec<_> = inv.accelerators.iter().map(|a| row([&a.kind, &a.dev_path])).collect();
        out.extend(indent(table(&rows)));
    }
    let mut text = out.join("\n");
    text.push('\n');
    text
}

fn row<const N: usize>(cells: [&str; N]) -> Vec<String> {
    cells.iter().map(|c| (*c).to_owned()).collect()
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
    }
}

fn section(out: &mut Vec<String>, title: &str) {
    out.push(String::new());
    out.push(title.to_owned());
}

fn indent(lines: Vec<String>) -> impl Iterator<Item = String> {
    lines.into_iter().map(|l| format!("  {l}"))
}

/// Rows with their columns aligned (two spaces between); empty cells at the end are dropped.
fn table(rows: &[Vec<String>]) -> Vec<String> {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|i| rows.iter().filter_map(|r| r.get(i)).map(|c| c.chars().count()).max().unwrap_or(0))
        .collect();
    rows.iter()
        .map(|r| {
            let mut line = String::new();
            for (i, cell) in r.iter().enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                line.push_str(cell);
                if i + 1 < r.len() {
                    line.extend(std::iter::repeat_n(' ', widths[i] - cell.chars().count()));
                }
            }
            line.trim_end().to_owned()
        })
        .collect()
}

/// Items with a name column and labelled lines after it:
/// ```text
///   /dev/ttyUSB0  by-id    usb-FTDI_…
///                 compose  - { serial: … }
/// ```
fn items_block(items: &[(String, Vec<(&'static str, String)>)]) -> Vec<String> {
    let name_width = items.iter().map(|(n, _)| n.chars().count()).max().unwrap_or(0);
    let key_width =
        items.iter().flat_map(|(_, l)| l.iter().map(|(k, _)| k.len())).max().unwrap_or(0);
    let mut out = Vec::new();
    for (name, lines) in items {
        for (i, (key, value)) in lines.iter().enumerate() {
            let first = if i == 0 { name.as_str() } else { "" };
            out.push(format!("  {first:<name_width$}  {key:<key_width$}  {value}"));
        }
    }
    out
}

fn serial_lines(p: &SerialPort) -> Vec<(&'static str, String)> {
    let mut lines = Vec::new();
    lines.extend(p.by_id.iter().map(|n| ("by-id", n.clone())));
    lines.extend(p.by_path.iter().map(|n| ("by-path", n.clone())));
    if let Some(u) = &p.usb {
        let mut usb = format!("{}:{}", u.vendor, u.product);
        if let Some(s) = &u.serial {
            usb += &format!(" serial {s}");
        }
        let what: Vec<&str> =
            [&u.manufacturer, &u.product_name].into_iter().filter_map(|s| s.as_deref()).collect();
        if !what.is_empty() {
            usb += &format!(", {}", what.join(" "));
        }
        lines.push(("usb", usb));
    }
    lines.push(("compose", serial_compose(p)));
    lines
}

/// The x-fleet hardware item that asks for `p` by its most stable name: by-id, else by-path,
/// else USB ids, else the node itself (a built-in UART has no other name).
fn serial_compose(p: &SerialPort) -> String {
    let path = yaml(&p.dev_path);
    let selector = if let Some(id) = p.by_id.first() {
        format!("{{ by-id: {} }}", yaml(id))
    } else if let Some(by_path) = p.by_path.first() {
        format!("{{ by-path: {} }}", yaml(by_path))
    } else if let Some(u) = &p.usb {
        let ids = match &u.serial {
            Some(s) => format!("{}:{}:{s}", u.vendor, u.product),
            None => format!("{}:{}", u.vendor, u.product),
        };
        format!("{{ usb: {} }}", quoted(&ids))
    } else {
        return format!("- {{ device: {path}, path: {path} }}");
    };
    format!("- {{ serial: {selector}, path: {path} }}")
}

fn video_lines(v: &VideoDevice) -> Vec<(&'static str, String)> {
    let mut lines = vec![("name", or_dash(&v.name).to_owned())];
    lines.extend(v.by_id.iter().map(|n| ("by-id", n.clone())));
    lines.extend(v.by_path.iter().map(|n| ("by-path", n.clone())));
    let selector = if let Some(id) = v.by_id.first() {
        format!("{{ by-id: {} }}", yaml(id))
    } else if let Some(by_path) = v.by_path.first() {
        format!("{{ by-path: {} }}", yaml(by_path))
    } else if !v.name.is_empty() {
        format!("{{ name: {} }}", yaml(&v.name))
    } else {
        yaml(&v.dev_path)
    };
    lines.push(("compose", format!("- {{ video: {selector} }}")));
    lines
}

/// `s` as a YAML flow scalar: plain when that reads back as the same string, else quoted.
fn yaml(s: &str) -> String {
    let safe = s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._/+-".contains(&b))
        && s.bytes().any(|b| b.is_ascii_alphabetic())
        && !s.starts_with(['-', '.'])
        && !matches!(
            s.to_ascii_lowercase().as_str(),
            "true" | "false" | "yes" | "no" | "on" | "off" | "null" | "inf" | "nan"
        );
    if safe {
        s.to_owned()
    } else {
        quoted(s)
    }
}

fn quoted(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Bytes in binary units, one decimal (`8.0 GiB`).
fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use fleet_proto::inventory::{Disk, EngineInfo};

    use super::*;
    use crate::hardware::scan::{fixture_root, scan};

    fn rendered(name: &str) -> String {
        render_inventory(&scan(&fixture_root(name)).inventory)
    }

    #[test]
    fn the_rpi5_summary_names_each_port_and_how_to_ask_for_it() {
        let mut inv = scan(&fixture_root("rpi5")).inventory;
        inv.engine = Some(EngineInfo {
            name: "docker".into(),
            version: "24.0.7".into(),
            api_version: "1.43".into(),
        });
        inv.disks =
            vec![Disk { mount: "/".into(), total_bytes: 58 << 30, available_bytes: 21 << 30 }];
        let text = render_inventory(&inv);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[..4],
            [
                "host    aarch64, Debian GNU/Linux 12 (bookworm), kernel 6.6.31+rpt-rpi-2712, engine docker 24.0.7 (API 1.43)",
                "cpus    4 (Raspberry Pi 5 Model B Rev 1.0), online 0-3, isolated 3",
                "memory  8.0 GiB",
                "disk    /  21.0 GiB free of 58.0 GiB",
            ]
        );
        let has = |line: &str| assert!(lines.contains(&line), "no line {line:?} in\n{text}");
        has("  /dev/ttyAMA10  compose  - { device: /dev/ttyAMA10, path: /dev/ttyAMA10 }");
        has("  /dev/ttyUSB0   by-id    usb-FTDI_FT232R_USB_UART_A50285BI-if00-port0");
        has("                 by-path  platform-xhci-hcd.0-usb-0:1:1.0-port0");
        has("                 usb      0403:6001 serial A50285BI, FTDI FT232R USB UART");
        has("                 compose  - { serial: { by-id: usb-FTDI_FT232R_USB_UART_A50285BI-if00-port0 }, path: /dev/ttyUSB0 }");
        has("  gpiochip0   pinctrl-rp1              54 lines");
        has("  gpiochip10  gpio-brcmstb@107d508500  32 lines");
        has("  /dev/i2c-1  Synopsys DesignWare I2C adapter");
        has("  /dev/spidev0.0  bus 0, chip select 0");
        has("  dri  renderD128  v3d");
        // Nothing of what the Pi lacks.
        for absent in ["video", "can interfaces", "accelerators"] {
            assert!(!lines.iter().any(|l| l.starts_with(absent)), "{absent}");
        }
    }

    #[test]
    fn cameras_and_gpus_render_with_their_selectors() {
        let x86 = rendered("x86-nvidia");
        assert!(x86.contains("engine none"), "{x86}");
        assert!(x86.contains("compose  - { video: { by-id: usb-046d_HD_Pro_Webcam_C920_8B2F7D4F-video-index0 } }"), "{x86}");
        assert!(x86.contains("  nvidia  0           NVIDIA RTX A2000  driver 535.104.05"), "{x86}");
        assert!(x86.contains("  hailo  /dev/hailo0"), "{x86}");
        let jetson = rendered("jetson-orin");
        // The Jetson camera's name has a comma: quoted, or YAML would split the mapping.
        assert!(
            jetson.contains(r#"- { video: { name: "vi-output, imx219 9-0010" } }"#),
            "{jetson}"
        );
        assert!(
            jetson.contains("  jetson  0  NVIDIA Jetson AGX Orin Developer Kit  driver R36.3.0"),
            "{jetson}"
        );
        assert!(jetson.contains("can interfaces\n  can0\n"), "{jetson}");
    }

    #[test]
    fn compose_values_are_quoted_only_when_yaml_needs_it() {
        assert_eq!(yaml("usb-FTDI_FT232R-if00-port0"), "usb-FTDI_FT232R-if00-port0");
        assert_eq!(yaml("platform-usb-0:1.3:1.0-port0"), "\"platform-usb-0:1.3:1.0-port0\"");
        assert_eq!(yaml("0001"), "\"0001\"");
        assert_eq!(yaml("null"), "\"null\"");
        assert_eq!(yaml("a \"b\""), r#""a \"b\"""#);
        let usb_only = SerialPort {
            dev_path: "/dev/ttyACM0".into(),
            by_id: vec![],
            by_path: vec![],
            usb: Some(fleet_proto::inventory::UsbIds {
                vendor: "2341".into(),
                product: "0043".into(),
                serial: None,
                manufacturer: None,
                product_name: None,
            }),
        };
        assert_eq!(
            serial_compose(&usb_only),
            r#"- { serial: { usb: "2341:0043" }, path: /dev/ttyACM0 }"#
        );
    }
}
