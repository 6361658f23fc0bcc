//! Readers (valid, corrupt, truncated, mismatched files), the loader, splits,
//! the embedded digits, and the real Fashion-MNIST when it is installed.

use firebrand_autograd::Tensor;
use firebrand_data::{
    DataError, DataLoader, Dataset, Split, Standardize, TensorDataset, digits, find_dataset, load_mnist, parse_idx,
    read_csv_labeled, read_idx,
};
use std::io::Write;
use std::path::{Path, PathBuf};

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("firebrand-data-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn idx_bytes(dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut b = vec![0, 0, 0x08, dims.len() as u8];
    for d in dims {
        b.extend_from_slice(&d.to_be_bytes());
    }
    b.extend_from_slice(data);
    b
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

#[test]
fn idx_valid_plain_and_gzipped() {
    let d = tmpdir("idx");
    let bytes = idx_bytes(&[2, 2, 3], &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 255]);
    std::fs::write(d.join("a.idx"), &bytes).unwrap();
    std::fs::write(d.join("a.idx.gz"), gz(&bytes)).unwrap();
    let a = read_idx(d.join("a.idx")).unwrap();
    assert_eq!(a.dims, vec![2, 2, 3]);
    assert_eq!(read_idx(d.join("a.idx.gz")).unwrap(), a);
}

#[test]
fn idx_errors_name_the_problem() {
    let p = Path::new("x.idx");
    let e = parse_idx(&[1, 2, 3, 4, 5], p).unwrap_err();
    assert_eq!(e.to_string(), "x.idx: bad magic number: not an IDX file");
    let e = parse_idx(&[0, 0, 0x0D, 1, 0, 0, 0, 1, 0, 0, 0, 0], p).unwrap_err();
    assert!(e.to_string().contains("element type 0x0d is not supported"), "{e}");
    let e = parse_idx(&idx_bytes(&[3, 4], &[0; 10]), p).unwrap_err();
    assert_eq!(e.to_string(), "x.idx: truncated: header [3, 4] needs 12 bytes of data, found 10");
    let e = parse_idx(&idx_bytes(&[2], &[0; 3]), p).unwrap_err();
    assert!(e.to_string().contains("trailing bytes"), "{e}");
    let e = parse_idx(&[0, 0, 8, 3, 0, 0], p).unwrap_err();
    assert!(e.to_string().contains("truncated header"), "{e}");
    // A corrupt gzip stream.
    let d = tmpdir("badgz");
    let mut g = gz(&idx_bytes(&[4], &[1, 2, 3, 4]));
    let n = g.len();
    g.truncate(n - 6);
    std::fs::write(d.join("t.gz"), &g).unwrap();
    assert!(matches!(read_idx(d.join("t.gz")), Err(DataError::Format { .. })));
    assert!(matches!(read_idx(d.join("missing")), Err(DataError::Io { .. })));
}

#[test]
fn mnist_loader_checks_counts() {
    let d = tmpdir("mnist");
    let images: Vec<u8> = (0..3 * 28 * 28).map(|i| (i % 256) as u8).collect();
    std::fs::write(d.join("t10k-images-idx3-ubyte.gz"), gz(&idx_bytes(&[3, 28, 28], &images))).unwrap();
    std::fs::write(d.join("t10k-labels-idx1-ubyte"), idx_bytes(&[3], &[7, 2, 1])).unwrap();
    let (x, y) = load_mnist(&d, Split::Test).unwrap();
    assert_eq!(x.dims(), &[3, 28, 28]);
    assert_eq!(y.to_vec::<i64>(), vec![7, 2, 1]);
    assert_eq!(x.to_vec::<f32>()[255], 1.0);
    std::fs::write(d.join("t10k-labels-idx1-ubyte"), idx_bytes(&[2], &[7, 2])).unwrap();
    let e = load_mnist(&d, Split::Test).unwrap_err();
    assert!(e.to_string().contains("2 labels for 3 images"), "{e}");
    assert!(matches!(load_mnist(&d, Split::Train), Err(DataError::NotFound { .. })));
    let e = find_dataset("no-such-set", Some(&d.join("nowhere")), "probe", "hint text").unwrap_err();
    assert!(e.to_string().contains("hint text"), "{e}");
}

#[test]
fn csv_reader() {
    let d = tmpdir("csv");
    std::fs::write(d.join("ok.csv"), "a,b,label\n1,2,0\n3.5,-1,2\n").unwrap();
    let (x, y) = read_csv_labeled(d.join("ok.csv"), -1, true).unwrap();
    assert_eq!(x.to_vec::<f32>(), vec![1.0, 2.0, 3.5, -1.0]);
    assert_eq!(y.to_vec::<i64>(), vec![0, 2]);
    std::fs::write(d.join("first.csv"), "1,2.5,0\n3,-1,2\n").unwrap();
    let (x, y) = read_csv_labeled(d.join("first.csv"), 0, false).unwrap();
    assert_eq!((x.dims(), y.to_vec::<i64>()), (&[2, 2][..], vec![1, 3]));
    std::fs::write(d.join("short.csv"), "1,2,0\n3,1\n").unwrap();
    let e = read_csv_labeled(d.join("short.csv"), -1, false).unwrap_err();
    assert!(e.to_string().ends_with("short.csv: line 2: 2 fields, expected 3"), "{e}");
    std::fs::write(d.join("text.csv"), "1,x,0\n").unwrap();
    let e = read_csv_labeled(d.join("text.csv"), -1, false).unwrap_err();
    assert!(e.to_string().contains("line 1, column \"column 2\" (2): \"x\" is not a number"), "{e}");
    std::fs::write(d.join("frac.csv"), "1,2,0.5\n").unwrap();
    assert!(read_csv_labeled(d.join("frac.csv"), -1, false).unwrap_err().to_string().contains("not an integer"));
}

#[test]
fn loader_batches_shuffles_and_prefetches() {
    let ds = TensorDataset::new(Tensor::arange(0.0, 10.0, 1.0).reshape([10, 1]), Tensor::arange_i64(0, 10)).unwrap();
    let plain = DataLoader::new(ds.clone(), 3);
    assert_eq!(plain.num_batches(), 4);
    let sizes: Vec<usize> = plain.epoch(0).map(|(x, _)| x.dims()[0]).collect();
    assert_eq!(sizes, vec![3, 3, 3, 1]);
    let shuffled = DataLoader::new(ds.clone(), 3).shuffle(42).drop_last(true);
    let e0: Vec<i64> = shuffled.epoch(0).flat_map(|(_, y)| y.to_vec::<i64>()).collect();
    let again: Vec<i64> = shuffled.epoch(0).flat_map(|(_, y)| y.to_vec::<i64>()).collect();
    let e1: Vec<i64> = shuffled.epoch(1).flat_map(|(_, y)| y.to_vec::<i64>()).collect();
    assert_eq!(e0.len(), 9);
    assert_eq!(e0, again, "same seed and epoch, same order");
    assert_ne!(e0, e1, "epochs are shuffled differently");
    let mut all: Vec<i64> =
        DataLoader::new(ds.clone(), 4).shuffle(1).epoch(3).flat_map(|(_, y)| y.to_vec::<i64>()).collect();
    all.sort();
    assert_eq!(all, (0..10).collect::<Vec<_>>(), "every example once");
    let pre: Vec<Vec<i64>> =
        DataLoader::new(ds.clone(), 3).shuffle(5).prefetch(2).epoch(2).map(|(_, y)| y.to_vec()).collect();
    let direct: Vec<Vec<i64>> = DataLoader::new(ds, 3).shuffle(5).epoch(2).map(|(_, y)| y.to_vec()).collect();
    assert_eq!(pre, direct);
    // x and y stay paired.
    for (x, y) in DataLoader::new(digits(), 64).shuffle(3).epoch(0).take(3) {
        assert_eq!(x.dims()[0], y.dims()[0]);
    }
}

#[test]
fn digits_split_and_standardize() {
    let d = digits();
    assert_eq!(d.len(), 1797);
    let labels = d.y.to_vec::<i64>();
    assert!(labels.iter().all(|&l| (0..10).contains(&l)));
    assert!((0..10).all(|c| labels.iter().filter(|&&l| l == c).count() > 150));
    let x = d.x.to_vec::<f32>();
    assert!(x.iter().all(|&v| (0.0..=1.0).contains(&v)));
    let (train, val) = d.split(0.2, 9);
    assert_eq!((train.len(), val.len()), (1438, 359));
    let (train2, _) = d.split(0.2, 9);
    assert_eq!(train.y.to_vec::<i64>(), train2.y.to_vec::<i64>(), "seeded split");
    let s = Standardize::fit(&train.x);
    let z = s.apply(&train.x);
    let m = z.mean(&[0], false).to_vec::<f32>();
    assert!(m.iter().all(|v| v.abs() < 1e-4));
    let sd = z.std(&[0], 0, false).to_vec::<f32>();
    assert!(sd.iter().all(|&v| (v - 1.0).abs() < 1e-3 || v.abs() < 1e-6), "constant pixels stay 0");
}

#[test]
fn real_fashion_mnist_when_present() {
    // The shared data folder sits beside the repository root.
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/fashion-mnist");
    let found = find_dataset("fashion-mnist", Some(&shared), "t10k-images-idx3-ubyte", "")
        .or_else(|_| find_dataset("fashion-mnist", None, "t10k-images-idx3-ubyte", ""));
    let Ok(dir) = found else {
        eprintln!(
            "SKIPPED real_fashion_mnist_when_present: Fashion-MNIST not found (../shared/data/fashion-mnist, FIREBRAND_DATA, /usr/share/datasets)"
        );
        return;
    };
    let (x, y) = load_mnist(&dir, Split::Test).unwrap();
    assert_eq!(x.dims(), &[10_000, 28, 28]);
    let labels = y.to_vec::<i64>();
    assert!(
        (0..10).all(|c| labels.iter().filter(|&&l| l == c).count() == 1000),
        "Fashion-MNIST's test set is balanced"
    );
}

#[test]
fn read_text_reads_and_names_bad_files() {
    let dir = tmpdir("read_text");
    let good = dir.join("corpus.txt");
    std::fs::write(&good, "To be, or not to be").unwrap();
    let (path, text) = firebrand_data::read_text("corpus", "corpus.txt", Some(&good)).unwrap();
    assert_eq!((path, text.as_str()), (good.clone(), "To be, or not to be"));
    let corrupt = dir.join("latin1.txt");
    std::fs::write(&corrupt, [b'c', b'a', 0xE9, b'!']).unwrap(); // not UTF-8
    let e = firebrand_data::read_text("corpus", "latin1.txt", Some(&corrupt)).unwrap_err();
    assert!(matches!(e, DataError::Io { .. }) && e.to_string().contains("latin1.txt"), "{e}");
    let missing = dir.join("missing.txt");
    let e = firebrand_data::read_text("corpus", "missing.txt", Some(&missing)).unwrap_err();
    assert!(matches!(e, DataError::NotFound { .. }) && e.to_string().contains("missing.txt"), "{e}");
}
