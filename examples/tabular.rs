//! Tabular classification from any CSV file: reads it through the `csv`
//! crate (quoting, a header, the label column by name or index, string
//! columns one-hot), standardizes the features on the training rows, trains
//! an MLP and prints the test accuracy. A bad file exits with status 1 and
//! the reader's message, naming the file, line and column.
//!
//! Run: `cargo run --release --example tabular -- --csv FILE --label COLUMN [--epochs N] [--json]
//! [--no-header] [--missing error|drop|impute] [--test-fraction 0.2] [--seed 0] [--out DIR]`
//!
//! With `--out DIR` the weights (`model.safetensors`), the column mapping
//! (`schema.json`) and the standardization (`standardize.safetensors`) are
//! written there, so that new rows can be encoded as the training rows were.

use clap::{Parser, ValueEnum};
use firebrand::data::{Column, CsvOptions, Missing, Standardize, read_csv};
use firebrand::prelude::*;
use std::path::PathBuf;

mod common;

#[derive(Clone, Copy, ValueEnum)]
enum MissingArg {
    /// A missing, NaN or infinite value is an error naming the line and column.
    Error,
    /// Rows with one are left out.
    Drop,
    /// Filled with the column's mean (most frequent value for strings).
    Impute,
}

/// Trains an MLP on a CSV file's rows and reports test accuracy.
#[derive(Parser)]
struct Args {
    /// The CSV file (plain or .gz).
    #[arg(long)]
    csv: PathBuf,
    /// The file has no header line (columns are then named `column 1`, …).
    #[arg(long)]
    no_header: bool,
    /// The label column: a header name or an index (negative counts from the end).
    #[arg(long, default_value = "-1", allow_hyphen_values = true)]
    label: String,
    /// Training epochs.
    #[arg(long, default_value_t = 30)]
    epochs: usize,
    /// Print a JSON line `{"test_accuracy", "classes", "rows"}` last.
    #[arg(long)]
    json: bool,
    /// Missing, NaN and infinite values.
    #[arg(long, value_enum, default_value = "error")]
    missing: MissingArg,
    /// The fraction of rows held out for testing.
    #[arg(long, default_value_t = 0.2)]
    test_fraction: f32,
    /// Hidden units of the MLP.
    #[arg(long, default_value_t = 64)]
    hidden: usize,
    /// Seeds the split, the weights and the shuffling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Writes the weights, the schema and the standardization here.
    #[arg(long)]
    out: Option<PathBuf>,
}

fn main() {
    let args = Args::parse();
    let missing = match args.missing {
        MissingArg::Error => Missing::Error,
        MissingArg::Drop => Missing::DropRow,
        MissingArg::Impute => Missing::ImputeMean,
    };
    let label = match args.label.parse::<isize>() {
        Ok(i) => Column::Index(i),
        Err(_) => Column::Name(args.label.clone()),
    };
    let data = read_csv(&args.csv, &CsvOptions { label, missing, header: !args.no_header, ..Default::default() })
        .unwrap_or_else(|e| {
            eprintln!("error: {e}");
            std::process::exit(1)
        });
    let (rows, width, classes) = (data.x.dims()[0], data.schema.width(), data.schema.classes);
    println!(
        "{}: {rows} rows ({} dropped), {} feature columns -> {width} inputs, label {:?} with {classes} classes",
        args.csv.display(),
        data.dropped_rows,
        data.schema.features.len(),
        data.schema.label
    );
    if !(args.test_fraction > 0.0 && args.test_fraction < 1.0) || rows < 2 {
        common::fail(format!("--test-fraction {} must be in (0, 1), with at least 2 rows", args.test_fraction));
    }
    manual_seed(args.seed);
    let (train, test) = data.dataset().split(args.test_fraction, args.seed);
    // Standardize with the training rows' statistics only.
    let scale = Standardize::fit(&train.x);
    let train = TensorDataset::new(scale.apply(&train.x), train.y.clone()).expect("same rows");
    let test = TensorDataset::new(scale.apply(&test.x), test.y.clone()).expect("same rows");

    let net = Sequential::new()
        .add(Linear::new(width, args.hidden).with_activation(Activation::Relu))
        .add(Dropout::new(0.1))
        .add(Linear::new(args.hidden, classes));
    let opt = Adam::new(net.named_parameters(), 3e-3);
    let mut model = Model::new(net, opt, Loss::CROSS_ENTROPY);
    let opts =
        FitOptions { epochs: args.epochs, batch_size: 32, seed: args.seed, verbose: !args.json, ..Default::default() };
    let history = model.fit(&train, &opts).unwrap_or_else(|e| common::fail(e));
    let accuracy = model.evaluate(&test, 256).metrics.map_or(0.0, |m| m.accuracy);
    let last = history.epochs.last().expect("at least one epoch");
    println!("train loss {:.4}; test accuracy {:.4} on {} rows", last.loss, accuracy, test.len());
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| common::fail(format!("{}: {e}", dir.display())));
        firebrand::nn::save_weights(&model.net, dir.join("model.safetensors")).unwrap_or_else(|e| common::fail(e));
        data.schema.save(dir.join("schema.json")).unwrap_or_else(|e| common::fail(e));
        firebrand::nn::serialize::save_tensors(
            dir.join("standardize.safetensors"),
            &[("mean".to_string(), scale.mean.clone()), ("std".to_string(), scale.std.clone())],
        )
        .unwrap_or_else(|e| common::fail(e));
        println!("saved the model, schema.json and the standardization to {}", dir.display());
    }
    if args.json {
        println!("{}", serde_json::json!({ "test_accuracy": accuracy, "classes": classes, "rows": rows }));
    }
}
