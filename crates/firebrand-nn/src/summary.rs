//! `summary()`: a Keras-style table of any module's layers, nested ones
//! indented, with output shapes recorded during one forward pass.

use crate::Module;
use crate::module::recording_outputs;
use firebrand_autograd::{Tensor, with_no_grad};

/// One row per sub-module, depth first. A module's output shape is what its
/// forward returned the first time it ran; `-` when it never ran, or is a
/// hand-written module that does not call `record_output`.
pub(crate) fn table<M: Module + ?Sized>(root: &M, x: &Tensor) -> String {
    let outputs = recording_outputs(|| {
        with_no_grad(|| {
            root.forward(x);
        })
    });
    // A module's first recorded output, keyed by address and type name.
    let shape_at = |addr: usize, type_name: &str| {
        outputs.iter().find(|(k, t, _)| *k == addr && *t == type_name).map(|(_, _, dims)| batchless(dims))
    };
    let shape_of = |m: &dyn Module| shape_at((m as *const dyn Module).cast::<()>() as usize, m.type_name());
    let mut rows: Vec<(String, String, usize)> = Vec::new();
    let mut kids = Vec::new();
    root.visit_children("", &mut |name, c| kids.push((name.to_string(), c)));
    // `name` is the full dotted path; rows show it relative to the parent.
    let mut row = |depth: usize, name: &str, parent: &str, m: &dyn Module| {
        let label = name.strip_prefix(parent).unwrap_or(name);
        rows.push((
            format!("{}{label}: {}", "  ".repeat(depth), m.describe()),
            shape_of(m).unwrap_or_else(|| "-".into()),
            total_of(m),
        ));
    };
    for (name, c) in kids {
        row(0, &name, "", c);
        walk(c, &format!("{name}."), 1, &mut row);
    }
    if rows.is_empty() {
        // A leaf at the top: one row for itself.
        let shape = shape_at((root as *const M).cast::<()>() as usize, root.type_name());
        rows.push((root.describe(), shape.unwrap_or_else(|| "-".into()), total_of(root)));
    }
    let w0 = rows.iter().map(|r| r.0.chars().count()).max().unwrap_or(0).max("Layer (type)".len());
    let w1 = rows.iter().map(|r| r.1.len()).max().unwrap_or(0).max("Output Shape".len());
    let w2 = rows.iter().map(|r| group(r.2).len()).max().unwrap_or(0).max("Param #".len());
    let width = w0 + w1 + w2 + 6;
    let mut out = String::new();
    out.push_str(&format!("{}\n", "=".repeat(width)));
    out.push_str(&format!("{:<w0$}   {:<w1$}   {:>w2$}\n", "Layer (type)", "Output Shape", "Param #"));
    out.push_str(&format!("{}\n", "=".repeat(width)));
    for (name, shape, n) in &rows {
        out.push_str(&format!("{name:<w0$}   {shape:<w1$}   {:>w2$}\n", group(*n)));
    }
    out.push_str(&format!("{}\n", "=".repeat(width)));
    let (mut total, mut trainable, mut seen) = (0, 0, std::collections::HashSet::new());
    root.visit_parameters("", &mut |_, t| {
        if seen.insert(t.id()) {
            total += t.elem_count();
            if t.requires_grad() {
                trainable += t.elem_count();
            }
        }
    });
    out.push_str(&format!("Total params: {}\n", group(total)));
    out.push_str(&format!("Trainable params: {}\n", group(trainable)));
    out.push_str(&format!("Non-trainable params: {}\n", group(total - trainable)));
    out
}

fn walk<'a>(m: &'a dyn Module, prefix: &str, depth: usize, f: &mut dyn FnMut(usize, &str, &str, &'a dyn Module)) {
    let mut kids = Vec::new();
    m.visit_children(prefix, &mut |name, c| kids.push((name.to_string(), c)));
    for (name, c) in kids {
        f(depth, &name, prefix, c);
        walk(c, &format!("{name}."), depth + 1, f);
    }
}

/// `(None, 8, 28, 28)` for dims `[1, 8, 28, 28]`.
fn batchless(dims: &[usize]) -> String {
    let inner =
        std::iter::once("None".to_string()).chain(dims.iter().skip(1).map(|d| d.to_string())).collect::<Vec<_>>();
    format!("({})", inner.join(", "))
}

fn total_of<M: Module + ?Sized>(m: &M) -> usize {
    let mut seen = std::collections::HashSet::new();
    let mut n = 0;
    m.visit_parameters("", &mut |_, t| {
        if seen.insert(t.id()) {
            n += t.elem_count();
        }
    });
    n
}

/// `1234567` as `1,234,567`.
fn group(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
