//! The tabular CSV reader: quoting, headers, label by name or index,
//! categorical columns, the missing-value policies, label checks, and
//! schemas that read new files the same way. Every bad input is an error
//! naming the file and, where there is one, the line and column.

use firebrand_data::{
    Categorical, Column, CsvOptions, CsvSchema, DataError, FeatureKind, Missing, read_csv, read_csv_with_schema,
};
use std::path::PathBuf;

fn file(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("firebrand-csv-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn label(name: &str) -> CsvOptions {
    CsvOptions { label: name.into(), ..Default::default() }
}

fn err(path: &PathBuf, opts: &CsvOptions) -> String {
    let e = read_csv(path, opts).unwrap_err();
    assert!(matches!(e, DataError::Format { .. }), "{e:?}");
    let s = e.to_string();
    assert!(s.starts_with(&path.display().to_string()), "names the file: {s}");
    s
}

#[test]
fn quoted_fields_headers_and_the_label_by_name_or_index() {
    let p = file("quoted.csv", "\"x, first\",y,class\n\"1,5\",2,1\n3,\"4\",0\n");
    // A quoted "1,5" is one field (a decimal comma is not a number, so the column is categorical).
    let d = read_csv(&p, &label("class")).unwrap();
    assert_eq!(d.schema.features[0].name, "x, first");
    assert!(
        matches!(&d.schema.features[0].kind, FeatureKind::Categorical { categories, .. } if categories == &["1,5", "3"])
    );
    assert_eq!(d.x.to_vec::<f32>(), [1.0, 0.0, 2.0, 0.0, 1.0, 4.0]);
    assert_eq!(d.y.to_vec::<i64>(), [1, 0]);
    assert_eq!((d.schema.classes, d.schema.label_position), (2, 2));
    // By index, from either end, and a name that is a number.
    for l in [Column::Index(2), Column::Index(-1), Column::Name("2".into())] {
        assert_eq!(read_csv(&p, &CsvOptions { label: l, ..Default::default() }).unwrap().y.to_vec::<i64>(), [1, 0]);
    }
    let m = err(&p, &label("kind"));
    assert!(m.contains("no column named \"kind\"; the columns are [\"x, first\", \"y\", \"class\"]"), "{m}");
    assert!(
        err(&p, &CsvOptions { label: Column::Index(5), ..Default::default() })
            .contains("label column 5 is outside the 3 columns")
    );
    // No header: columns are named by position.
    let p = file("plain.csv", "1,2,0\n3,4,1\n");
    let d = read_csv(&p, &CsvOptions { header: false, ..Default::default() }).unwrap();
    assert_eq!((d.x.dims(), d.schema.features[1].name.as_str()), (&[2, 2][..], "column 2"));
    // Semicolons.
    let p = file("semi.csv", "a;b\n1.5;0\n");
    let d = read_csv(&p, &CsvOptions { delimiter: b';', ..Default::default() }).unwrap();
    assert_eq!(d.x.to_vec::<f32>(), [1.5]);
}

#[test]
fn string_columns_become_one_hot_or_indices_and_string_labels_classes() {
    let p = file("cats.csv", "colour,size,species\nred,1,cat\nblue,2,dog\nred,3,cat\ngreen,4,bird\n");
    let d = read_csv(&p, &label("species")).unwrap();
    // colour one-hot over (blue, green, red), then size.
    assert_eq!(d.x.dims(), &[4, 4]);
    assert_eq!(&d.x.to_vec::<f32>()[..8], [0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 2.0]);
    assert_eq!(d.schema.label_names.as_deref(), Some(&["bird".to_string(), "cat".into(), "dog".into()][..]));
    assert_eq!(d.y.to_vec::<i64>(), [1, 2, 1, 0]);
    let d = read_csv(&p, &CsvOptions { categorical: Categorical::Index, ..label("species") }).unwrap();
    assert_eq!(d.x.to_vec::<f32>()[..4], [2.0, 1.0, 0.0, 2.0]);
    let m = err(&p, &CsvOptions { categorical: Categorical::Refuse, ..label("species") });
    assert!(m.ends_with("line 2, column \"colour\" (1): \"red\" is not a number"), "{m}");
}

#[test]
fn missing_nan_and_inf_are_errors_unless_a_policy_allows_them() {
    let p = file("gaps.csv", "a,b,y\n1,10,0\nNA,20,1\n3,inf,1\n5,,0\n");
    let m = err(&p, &CsvOptions::default());
    assert!(m.ends_with("line 3, column \"a\" (1): missing or non-finite value (\"NA\"); choose a policy to drop such rows or impute them"), "{m}");
    let p2 = file("nan.csv", "a,b,y\n1,NaN,0\n");
    assert!(
        err(&p2, &CsvOptions::default()).contains("line 2, column \"b\" (2): missing or non-finite value (\"NaN\")")
    );
    let p3 = file("inf.csv", "a,b,y\n1,-inf,0\n");
    assert!(err(&p3, &CsvOptions::default()).contains("(\"-inf\")"));
    // Drop the rows.
    let d = read_csv(&p, &CsvOptions { missing: Missing::DropRow, ..Default::default() }).unwrap();
    assert_eq!((d.x.to_vec::<f32>(), d.dropped_rows), (vec![1.0, 10.0], 3));
    // Impute the column means of the values present.
    let d = read_csv(&p, &CsvOptions { missing: Missing::ImputeMean, ..Default::default() }).unwrap();
    assert_eq!(d.x.to_vec::<f32>(), [1.0, 10.0, 3.0, 20.0, 3.0, 15.0, 5.0, 15.0]);
    // A label cannot be imputed.
    let p = file("nolabel.csv", "a,y\n1,0\n2,\n");
    assert!(
        err(&p, &CsvOptions { missing: Missing::ImputeMean, ..Default::default() })
            .contains("line 3, label column \"y\": the label is missing")
    );
    // Everything dropped.
    let p = file("allgone.csv", "a,y\n?,0\n");
    assert!(
        err(&p, &CsvOptions { missing: Missing::DropRow, ..Default::default() })
            .contains("every one of the 1 rows has a missing value")
    );
}

#[test]
fn bad_labels_empty_files_and_ragged_rows_are_errors_naming_the_file() {
    let p = file("neg.csv", "a,y\n1,0\n2,-1\n");
    assert!(err(&p, &CsvOptions::default()).ends_with("line 3: label -1 is negative; class labels run from 0"));
    let p = file("frac.csv", "a,y\n1,0.5\n");
    assert!(err(&p, &CsvOptions::default()).ends_with("line 2: label \"0.5\" is not an integer"));
    let p = file("range.csv", "a,y\n1,0\n2,12\n");
    let m = err(&p, &CsvOptions { classes: Some(10), ..Default::default() });
    assert!(m.ends_with("line 3: label 12 is out of range for 10 classes"), "{m}");
    assert!(err(&file("empty.csv", ""), &CsvOptions::default()).ends_with("the file is empty"));
    assert!(err(&file("blank.csv", "\n  \n"), &CsvOptions::default()).ends_with("the file is empty"));
    assert!(err(&file("header.csv", "a,b,y\n"), &CsvOptions::default()).ends_with("no data rows"));
    let m = err(&file("ragged.csv", "a,b,y\n1,2,0\n3,1\n"), &CsvOptions::default());
    assert!(m.ends_with("line 3: 2 fields, expected 3"), "{m}");
    let m = err(&file("quote.csv", "a,y\n\"1,0\n"), &CsvOptions::default());
    assert!(!m.is_empty());
    assert!(matches!(
        read_csv(file("x", "").with_file_name("missing.csv"), &CsvOptions::default()),
        Err(DataError::Io { .. })
    ));
}

#[test]
fn a_schema_saves_and_reads_new_files_the_same_way() {
    let train = file("train.csv", "colour,size,y\nred,1,0\nblue,,1\nred,3,1\n");
    let opts = CsvOptions { missing: Missing::ImputeMean, ..Default::default() };
    let d = read_csv(&train, &opts).unwrap();
    let path = train.with_file_name("schema.json");
    d.schema.save(&path).unwrap();
    let schema = CsvSchema::load(&path).unwrap();
    assert_eq!(schema, d.schema);
    // The test file's own statistics do not matter: the training fill (2.0) and categories are used.
    let test = file("test.csv", "colour,size,y\nblue,,0\nred,10,1\n");
    let t = read_csv_with_schema(&test, &schema, &opts).unwrap();
    assert_eq!(t.x.to_vec::<f32>(), [1.0, 0.0, 2.0, 0.0, 1.0, 10.0]);
    let unseen = file("unseen.csv", "colour,size,y\ngreen,1,0\n");
    let e = read_csv_with_schema(&unseen, &schema, &opts).unwrap_err().to_string();
    assert!(e.contains("line 2, column \"colour\" (1): category \"green\" was not seen"), "{e}");
    let narrow = file("narrow.csv", "colour,y\nred,0\n");
    assert!(
        read_csv_with_schema(&narrow, &schema, &opts).unwrap_err().to_string().contains("line 2: 2 fields, expected 3")
    );
    std::fs::write(&path, "{not json").unwrap();
    assert!(CsvSchema::load(&path).unwrap_err().to_string().contains("not a CSV schema"));
}
