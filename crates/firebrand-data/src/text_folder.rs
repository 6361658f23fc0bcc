//! A labeled text collection from a folder of class folders (Keras'
//! `text_dataset_from_directory`): one folder per label, one `.txt` file
//! per document.

use crate::DataError;
use std::path::{Path, PathBuf};

/// Documents and their labels read from class folders.
#[derive(Debug, Clone, PartialEq)]
pub struct TextFolder {
    /// Each document's text, in sorted (class, file) order.
    pub texts: Vec<String>,
    /// Each document's class index into [`TextFolder::class_names`].
    pub labels: Vec<usize>,
    /// The class folders' names, sorted (index = label).
    pub class_names: Vec<String>,
}

impl TextFolder {
    /// Indices of a seeded shuffle split into `(train, test)` with
    /// `test_fraction` of each class in the test part (stratified, so every
    /// class keeps its share), as `train_test_split(..., stratify=labels)`.
    pub fn split(&self, test_fraction: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
        use rand::SeedableRng;
        use rand::seq::SliceRandom;
        let mut rng = rand::rngs::Xoshiro256PlusPlus::seed_from_u64(seed);
        let (mut train, mut test) = (Vec::new(), Vec::new());
        for c in 0..self.class_names.len() {
            let mut idx: Vec<usize> = (0..self.labels.len()).filter(|&i| self.labels[i] == c).collect();
            idx.shuffle(&mut rng);
            let n_test = (idx.len() as f64 * test_fraction).round() as usize;
            test.extend_from_slice(&idx[..n_test]);
            train.extend_from_slice(&idx[n_test..]);
        }
        train.shuffle(&mut rng);
        test.sort_unstable();
        (train, test)
    }
}

/// Reads `dir/<class>/*.txt`: each sub-folder is a class (sorted by name),
/// each `.txt` file in it a document. Text that is not UTF-8 is read with
/// the bad bytes replaced (`U+FFFD`), as Python's `errors="replace"`.
///
/// ```no_run
/// let data = firebrand_data::text_dataset_from_directory("bbcnews/data").unwrap();
/// println!("{} documents in {:?}", data.texts.len(), data.class_names);
/// ```
///
/// # Errors
/// When the folder cannot be read, has no class folders, or a class has no
/// `.txt` file: each names the path.
pub fn text_dataset_from_directory(dir: impl AsRef<Path>) -> Result<TextFolder, DataError> {
    let dir = dir.as_ref();
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DataError::Io { path, source }
    };
    let mut classes: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    classes.sort();
    if classes.is_empty() {
        return Err(DataError::format(dir, "no class folders (expected one sub-folder per label, with .txt files)"));
    }
    let mut out = TextFolder { texts: Vec::new(), labels: Vec::new(), class_names: Vec::new() };
    for (label, class) in classes.iter().enumerate() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(class)
            .map_err(io(class))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "txt"))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(DataError::format(class, "a class folder without .txt files"));
        }
        for f in files {
            let bytes = std::fs::read(&f).map_err(io(&f))?;
            out.texts.push(String::from_utf8_lossy(&bytes).into_owned());
            out.labels.push(label);
        }
        out.class_names.push(class.file_name().unwrap_or_default().to_string_lossy().into_owned());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_folders_become_labels_and_the_split_is_stratified() {
        let root = std::env::temp_dir().join(format!("fb-textfolder-{}", std::process::id()));
        for (class, n) in [("sport", 10), ("tech", 5)] {
            std::fs::create_dir_all(root.join(class)).unwrap();
            for i in 0..n {
                std::fs::write(root.join(class).join(format!("{i:03}.txt")), format!("{class} {i}")).unwrap();
            }
        }
        std::fs::write(root.join("tech/latin1.txt"), b"caf\xe9").unwrap();
        std::fs::write(root.join("tech/notes.md"), "ignored").unwrap();
        let d = text_dataset_from_directory(&root).unwrap();
        assert_eq!(d.class_names, ["sport", "tech"]);
        assert_eq!(d.texts.len(), 16);
        assert_eq!(d.texts[0], "sport 0");
        assert!(d.texts.contains(&"caf\u{fffd}".to_string()));
        let (train, test) = d.split(0.2, 7);
        assert_eq!(train.len() + test.len(), 16);
        assert_eq!(test.iter().filter(|&&i| d.labels[i] == 0).count(), 2);
        assert_eq!(test.iter().filter(|&&i| d.labels[i] == 1).count(), 1);
        assert_eq!(d.split(0.2, 7), (train, test), "seeded");
        std::fs::create_dir_all(root.join("empty")).unwrap();
        let e = text_dataset_from_directory(&root).unwrap_err().to_string();
        assert!(e.contains("empty") && e.contains(".txt"), "{e}");
        std::fs::remove_dir_all(&root).unwrap();
        assert!(text_dataset_from_directory(&root).is_err());
    }
}
