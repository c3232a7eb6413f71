//! Echoes values of every WIT type so tests can round-trip the JSON mapping
//! through a real component.

airlock_sdk::generate!({ path: "wit", world: "types" });

use exports::airlock_tests::types::shapes::{Everything, Guest as ShapesGuest, Shape};

struct Types;

impl ShapesGuest for Types {
    fn echo(v: Everything) -> Everything {
        v
    }

    fn area(s: Shape) -> f64 {
        match s {
            Shape::Circle(r) => std::f64::consts::PI * r * r,
            Shape::Rect(p) => f64::from(p.x) * f64::from(p.y),
            Shape::Empty => 0.0,
        }
    }
}

impl Guest for Types {
    fn describe(n: u32, style: Style) -> String {
        match style {
            Style::Brief => format!("{n}"),
            Style::Detailed => format!("{n}, which is {}", if n.is_multiple_of(2) { "even" } else { "odd" }),
        }
    }

    fn echo_u64(v: u64) -> u64 {
        v
    }

    fn echo_s64(v: i64) -> i64 {
        v
    }

    fn echo_f32(v: f32) -> f32 {
        v
    }

    fn echo_char(v: char) -> char {
        v
    }

    fn echo_nested(v: Option<Option<u8>>) -> Option<Option<u8>> {
        v
    }

    fn echo_flags(v: Vec<String>) -> Vec<String> {
        v
    }

    fn checked_div(a: i32, b: i32) -> Result<i32, String> {
        a.checked_div(b).ok_or_else(|| format!("cannot divide {a} by {b}"))
    }

    fn nothing() {}
}

export!(Types);
