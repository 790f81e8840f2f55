//! Loaders on small sample files written in each format's exact layout
//! (`tests/data/`), plus the real mathematics and WordNet files when present.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use fluxmoe_data::tasks::registry::{load_train_test, DataDirs};
use fluxmoe_data::tasks::{dolly, generic, gsm8k, math, mmlu, piqa, wordnet};
use fluxmoe_data::{Error, Example, GenerationMetric, LoadOptions, TaskKind};

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

#[test]
fn math_sample() {
    let loaded = math::load(
        &data("mathematics"),
        math::MathSplit::Train,
        LoadOptions::STRICT,
    )
    .unwrap();
    let task = loaded.task;
    assert_eq!(task.name, "math");
    assert_eq!(
        task.kind,
        TaskKind::Generation {
            metric: GenerationMetric::ExactMatch
        }
    );
    assert_eq!(task.len(), 3);
    let ex = &task.examples[1];
    assert_eq!(ex.id, "arithmetic__add_or_sub-train-1");
    assert_eq!(ex.prompt, "What is -4 - 26.971?");
    assert_eq!(ex.target, "-30.971");
    assert_eq!(ex.group.as_deref(), Some("arithmetic__add_or_sub"));
    let test = math::load(
        &data("mathematics"),
        math::MathSplit::Test,
        LoadOptions::STRICT,
    )
    .unwrap();
    assert_eq!(test.task.examples[0].target, "42");
}

#[test]
fn math_real_files_when_present() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/mathematics");
    if !dir.join("test.jsonl").is_file() {
        eprintln!("skipping: {} not found", dir.display());
        return;
    }
    let loaded = math::load(&dir, math::MathSplit::Test, LoadOptions::STRICT).unwrap();
    assert_eq!(loaded.n_skipped, 0);
    // 300 problems for each of the 20 modules (see the folder's README).
    assert_eq!(loaded.task.len(), 6000);
    let mut modules: Vec<&str> = loaded.task.groups().into_iter().flatten().collect();
    modules.sort();
    modules.dedup();
    assert_eq!(modules.len(), 20);
}

#[test]
fn dolly_sample() {
    let task = dolly::load(&data("dolly.jsonl"), LoadOptions::STRICT)
        .unwrap()
        .task;
    assert_eq!(task.len(), 3);
    assert_eq!(
        task.examples[0].prompt,
        "When did Virgin Australia start operating?\n\nContext:\nVirgin Australia commenced services on 31 August 2000 as Virgin Blue."
    );
    assert_eq!(
        task.examples[1].prompt,
        "Which is a species of fish? Tope or Rope"
    );
    assert_eq!(task.examples[1].target, "Tope");
    assert_eq!(task.examples[2].group.as_deref(), Some("open_qa"));
    assert_eq!(task.examples[2].id, "dolly-3");
}

#[test]
fn gsm8k_sample() {
    let task = gsm8k::load(&data("gsm8k.jsonl"), LoadOptions::STRICT)
        .unwrap()
        .task;
    let targets: Vec<&str> = task.examples.iter().map(|e| e.target.as_str()).collect();
    assert_eq!(targets, ["72", "1,080"]);
    assert!(task.examples[0].prompt.starts_with("Natalia sold clips"));
    assert_eq!(task.examples[0].group, None);
}

#[test]
fn mmlu_folder_and_quoting() {
    let task = mmlu::load(&data("mmlu"), LoadOptions::STRICT).unwrap().task;
    assert_eq!(task.kind, TaskKind::MultipleChoice);
    assert_eq!(task.len(), 3);
    // Files are read in name order: anatomy, then astronomy.
    let first = &task.examples[0];
    assert_eq!(first.id, "anatomy-1");
    assert_eq!(first.answer, Some(3));
    assert_eq!(first.target, "The second and third pharyngeal arches");
    assert_eq!(first.group.as_deref(), Some("anatomy"));
    let quoted = &task.examples[2];
    assert_eq!(
        quoted.prompt,
        "Which is true of \"quoted\", multi-line text?"
    );
    assert_eq!(quoted.choices.as_deref().unwrap()[0], "One,\ntwo");
    assert_eq!(quoted.answer, Some(0));
    assert_eq!(quoted.group.as_deref(), Some("astronomy"));
}

#[test]
fn mmlu_bad_answer_letter() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("law_test.csv");
    std::fs::write(&path, "q,a,b,c,d,A\nq2,a,b,c,d,E\nq3,a,b,c\n").unwrap();
    let err = mmlu::load(&path, LoadOptions::STRICT).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{}:2: answer must be one of A, B, C, D, got `E`",
            path.display()
        )
    );
    let loaded = mmlu::load(&path, LoadOptions::LENIENT).unwrap();
    assert_eq!((loaded.task.len(), loaded.n_skipped), (1, 2));
    let bad_name = dir.path().join("law.csv");
    std::fs::write(&bad_name, "q,a,b,c,d,A\n").unwrap();
    assert!(matches!(
        mmlu::load(&bad_name, LoadOptions::STRICT),
        Err(Error::Format { .. })
    ));
}

fn mmlu_pq(rel: &str) -> PathBuf {
    data("mmlu_parquet").join(rel)
}

/// The examples of `tests/data/mmlu_parquet` (see its `make_samples.py`).
fn mmlu_pq_expected() -> Vec<Example> {
    let rows: [(&str, usize, &str, [&str; 4], usize); 6] = [
        (
            "anatomy",
            1,
            "What is the embryological origin of the hyoid bone?",
            [
                "The first pharyngeal arch",
                "The first and second pharyngeal arches",
                "The second pharyngeal arch",
                "The second and third pharyngeal arches",
            ],
            3,
        ),
        (
            "anatomy",
            2,
            "Which nerve innervates the muscles of facial expression (les muscles peauciers)?",
            [
                "Trigeminal nerve",
                "Facial nerve",
                "Vagus nerve",
                "Hypoglossal nerve",
            ],
            1,
        ),
        (
            "anatomy",
            3,
            "Wie groß ist ein rotes Blutkörperchen? 赤血球の大きさは？",
            ["≈ 7.5 µm", "≈ 75 µm", "≈ 0.75 µm", "≈ 750 Å"],
            0,
        ),
        (
            "astronomy",
            1,
            "What is the closest star to the Sun?",
            [
                "Sirius",
                "Alpha Centauri A",
                "Proxima Centauri",
                "Barnard's Star",
            ],
            2,
        ),
        (
            "astronomy",
            2,
            "How long does light from the Sun take to reach Earth?",
            [
                "About 8 seconds",
                "About 8 minutes",
                "About 8 hours",
                "About 8 days",
            ],
            1,
        ),
        (
            "astronomy",
            3,
            "Which is true of \"quoted\", multi-line\ntext, says Ångström?",
            ["One,\ntwo", "Say \"hi\"", "Three, four", "Comète"],
            0,
        ),
    ];
    rows.into_iter()
        .map(|(subject, n, question, choices, answer)| {
            let choices: Arc<[String]> = choices.map(String::from).to_vec().into();
            Example::multiple_choice(
                format!("{subject}-{n}"),
                question,
                choices,
                answer,
                Some(subject.to_string()),
            )
            .unwrap()
        })
        .collect()
}

#[test]
fn mmlu_parquet_file_and_folders() {
    let expected = mmlu_pq_expected();
    for path in [
        mmlu_pq("all/test-00000-of-00001.parquet"),
        mmlu_pq("all"),
        // The HF dataset's root: only `all/` is read, not the subject folders too.
        mmlu_pq(""),
        // Two shards: a subject's row numbers go on from one to the next.
        mmlu_pq("sharded"),
    ] {
        let loaded = mmlu::load(&path, LoadOptions::STRICT).unwrap();
        assert_eq!(loaded.task.kind, TaskKind::MultipleChoice);
        assert_eq!(loaded.n_skipped, 0);
        assert_eq!(loaded.task.examples, expected, "{}", path.display());
    }
    let anatomy = mmlu::load(&mmlu_pq("anatomy"), LoadOptions::STRICT).unwrap();
    assert_eq!(anatomy.task.examples, expected[..3]);
    let ex = &anatomy.task.examples[2];
    assert_eq!(ex.target, "≈ 7.5 µm");
    assert_eq!(ex.id, "anatomy-3");

    // A folder of subject folders (no `all/`): each one's `test*.parquet`, by path;
    // other splits and other files are left alone.
    let dir = tempfile::tempdir().unwrap();
    for subject in ["astronomy", "anatomy"] {
        let sub = dir.path().join(subject);
        std::fs::create_dir(&sub).unwrap();
        let src = mmlu_pq(subject).join("test-00000-of-00001.parquet");
        std::fs::copy(&src, sub.join("test-00000-of-00001.parquet")).unwrap();
        std::fs::copy(&src, sub.join("validation-00000-of-00001.parquet")).unwrap();
    }
    std::fs::write(dir.path().join("README.md"), "# MMLU\n").unwrap();
    let loaded = mmlu::load(dir.path(), LoadOptions::STRICT).unwrap();
    assert_eq!(loaded.task.examples, expected);
}

#[test]
fn mmlu_parquet_matches_csv() {
    // The same questions in the CSV release's form load to the same task.
    let csv = mmlu::load(&mmlu_pq("csv"), LoadOptions::STRICT).unwrap();
    let parquet = mmlu::load(&mmlu_pq("all"), LoadOptions::STRICT).unwrap();
    assert_eq!(csv.task, parquet.task);
}

#[test]
fn mmlu_parquet_bad_rows() {
    let path = mmlu_pq("bad/malformed_rows.parquet");
    let err = mmlu::load(&path, LoadOptions::STRICT).unwrap_err();
    assert!(err.is_record_error());
    assert_eq!(
        err.to_string(),
        format!(
            "{}:2: column `answer`: 4 is out of range for 4 choices (0..=3)",
            path.display()
        )
    );
    for (file, msg) in [
        (
            "bad/no_choices.parquet",
            "1: column `choices`: needs at least 2 choices, got 0",
        ),
        (
            "bad/null_question.parquet",
            "1: column `question`: expected a string, got null",
        ),
    ] {
        let path = mmlu_pq(file);
        let err = mmlu::load(&path, LoadOptions::STRICT).unwrap_err();
        assert_eq!(err.to_string(), format!("{}:{msg}", path.display()));
    }
    // Skipped rows still count towards the subject's row numbers, as CSV lines do.
    let loaded = mmlu::load(&path, LoadOptions::LENIENT).unwrap();
    assert_eq!(loaded.n_skipped, 3);
    let ids: Vec<&str> = loaded.task.examples.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, ["anatomy-1", "anatomy-5"]);
    assert_eq!(loaded.task.examples[1].answer, Some(1));
}

#[test]
fn mmlu_parquet_bad_columns() {
    // A missing or mistyped column, or an unread codec, fails the file even with
    // skip_malformed.
    for (file, msg) in [
        (
            "bad/missing_answer.parquet",
            "no column `answer` (MMLU parquet needs question, subject, choices, answer; \
             the file has question, subject, choices)",
        ),
        (
            "bad/zstd.parquet",
            "column `question` is compressed with ZSTD; only snappy (pyarrow's default, \
             which Hugging Face uses) and uncompressed parquet are read \
             (rewrite it with pyarrow: pq.write_table(pq.read_table(src), dst))",
        ),
        (
            "bad/answer_letter.parquet",
            "column `answer` must be an integer (the index of the right choice), \
             found BYTE_ARRAY (UTF8)",
        ),
    ] {
        let path = mmlu_pq(file);
        let err = mmlu::load(&path, LoadOptions::LENIENT).unwrap_err();
        assert!(matches!(err, Error::Format { .. }), "{err}");
        assert_eq!(err.to_string(), format!("{}: {msg}", path.display()));
    }
}

#[test]
fn mmlu_parquet_truncated_or_corrupt() {
    let bytes = std::fs::read(mmlu_pq("all/test-00000-of-00001.parquet")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let truncated = dir.path().join("test-00000-of-00001.parquet");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    for path in [truncated.clone(), dir.path().to_path_buf()] {
        let err = mmlu::load(&path, LoadOptions::LENIENT).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, Error::Format { .. }), "{msg}");
        assert!(
            msg.starts_with(&format!(
                "{}: not a readable parquet file:",
                truncated.display()
            )),
            "{msg}"
        );
    }
    // Footer intact, every page overwritten: an error naming the file, not a panic.
    // (The file ends with the footer, its length as u32 LE, and `PAR1`.)
    let n = bytes.len();
    let footer_len = u32::from_le_bytes(bytes[n - 8..n - 4].try_into().unwrap()) as usize;
    let mut corrupt = bytes.clone();
    for b in &mut corrupt[4..n - 8 - footer_len] {
        *b = 0xa5;
    }
    let path = dir.path().join("corrupt.parquet");
    std::fs::write(&path, &corrupt).unwrap();
    let err = mmlu::load(&path, LoadOptions::LENIENT).unwrap_err();
    assert!(matches!(err, Error::Format { .. }), "{err}");
    assert!(
        err.to_string()
            .starts_with(&format!("{}: row 1: cannot read:", path.display())),
        "{err}"
    );
    // Not parquet at all.
    std::fs::write(&path, "question,subject\n").unwrap();
    let err = mmlu::load(&path, LoadOptions::STRICT).unwrap_err();
    assert!(
        err.to_string()
            .starts_with(&format!("{}: not a readable parquet file:", path.display())),
        "{err}"
    );
}

#[test]
fn mmlu_folder_rules() {
    let dir = tempfile::tempdir().unwrap();
    let err = mmlu::load(dir.path(), LoadOptions::STRICT).unwrap_err();
    assert!(matches!(err, Error::Format { .. }), "{err}");
    assert!(err
        .to_string()
        .contains("no `<subject>_test.csv` or `test*.parquet` files"));
    // Both kinds side by side: refused rather than read twice.
    std::fs::copy(
        mmlu_pq("csv/anatomy_test.csv"),
        dir.path().join("anatomy_test.csv"),
    )
    .unwrap();
    std::fs::copy(
        mmlu_pq("anatomy/test-00000-of-00001.parquet"),
        dir.path().join("test-00000-of-00001.parquet"),
    )
    .unwrap();
    let err = mmlu::load(dir.path(), LoadOptions::STRICT).unwrap_err();
    assert!(
        err.to_string()
            .contains("holds both `<subject>_test.csv` files (1) and `test*.parquet` files (1)"),
        "{err}"
    );
}

#[test]
fn mmlu_parquet_through_the_registry() {
    let dirs = DataDirs {
        math: data("mathematics"),
        wordnet: data("wordnet"),
    };
    let spec = format!("mmlu:{}", mmlu_pq("all").display());
    let tt = load_train_test(&spec, &dirs, LoadOptions::STRICT, 0).unwrap();
    assert_eq!(tt.train.len() + tt.test.len(), 6);
    assert_eq!(tt.test.name, "mmlu");
}

#[test]
fn piqa_sample_and_label_mismatch() {
    let task = piqa::load(
        &data("piqa/valid.jsonl"),
        &data("piqa/valid-labels.lst"),
        LoadOptions::STRICT,
    )
    .unwrap()
    .task;
    assert_eq!(task.kind, TaskKind::MultipleChoice);
    assert_eq!(task.examples[0].answer, Some(0));
    assert_eq!(task.examples[1].answer, Some(1));
    assert_eq!(
        task.examples[1].target,
        "finish, woodgrain with  bobby pin "
    );
    let dir = tempfile::tempdir().unwrap();
    let labels = dir.path().join("labels.lst");
    std::fs::write(&labels, "0\n").unwrap();
    let err = piqa::load(&data("piqa/valid.jsonl"), &labels, LoadOptions::STRICT).unwrap_err();
    assert!(err.to_string().contains("1 labels for 2 lines"), "{err}");
    std::fs::write(&labels, "0\n2\n").unwrap();
    let err = piqa::load(&data("piqa/valid.jsonl"), &labels, LoadOptions::STRICT).unwrap_err();
    assert!(
        err.to_string()
            .ends_with(":2: label must be 0 or 1, got `2`"),
        "{err}"
    );
}

fn generic_cfg() -> generic::GenericConfig {
    generic::GenericConfig {
        name: "mine".into(),
        metric: GenerationMetric::RougeL,
    }
}

#[test]
fn generic_generation_and_choice() {
    let task = generic::load(
        &data("generic_gen.jsonl"),
        &generic_cfg(),
        LoadOptions::STRICT,
    )
    .unwrap()
    .task;
    assert_eq!(
        task.kind,
        TaskKind::Generation {
            metric: GenerationMetric::RougeL
        }
    );
    assert_eq!(task.examples[0].id, "mine-1");
    assert_eq!(task.examples[0].group.as_deref(), Some("greet"));
    assert_eq!(task.examples[1].id, "custom-2");
    let task = generic::load(
        &data("generic_mc.jsonl"),
        &generic_cfg(),
        LoadOptions::STRICT,
    )
    .unwrap()
    .task;
    assert_eq!(task.kind, TaskKind::MultipleChoice);
    assert_eq!(task.examples[0].target, "4");
    assert_eq!(task.examples[1].choices.as_deref().unwrap().len(), 3);
}

#[test]
fn generic_malformed_lines() {
    let path = data("malformed.jsonl");
    let err = generic::load(&path, &generic_cfg(), LoadOptions::STRICT).unwrap_err();
    assert!(
        err.to_string()
            .starts_with(&format!("{}:2: invalid json", path.display())),
        "{err}"
    );
    let loaded = generic::load(&path, &generic_cfg(), LoadOptions::LENIENT).unwrap();
    assert_eq!(loaded.n_skipped, 2);
    let prompts: Vec<&str> = loaded
        .task
        .examples
        .iter()
        .map(|e| e.prompt.as_str())
        .collect();
    assert_eq!(prompts, ["ok", "ok2"]);

    let dir = tempfile::tempdir().unwrap();
    let mixed = dir.path().join("mixed.jsonl");
    std::fs::write(
        &mixed,
        "{\"prompt\":\"a\",\"response\":\"b\"}\n{\"prompt\":\"c\",\"choices\":[\"x\",\"y\"],\"answer\":1}\n",
    )
    .unwrap();
    let err = generic::load(&mixed, &generic_cfg(), LoadOptions::STRICT).unwrap_err();
    assert!(err.to_string().contains(":2: line has `choices`"), "{err}");
    let no_answer = dir.path().join("no_answer.jsonl");
    std::fs::write(&no_answer, "{\"prompt\":\"c\",\"choices\":[\"x\",\"y\"]}\n").unwrap();
    let err = generic::load(&no_answer, &generic_cfg(), LoadOptions::STRICT).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("{}:1: missing field `answer`", no_answer.display())
    );
    let empty = dir.path().join("empty.jsonl");
    std::fs::write(&empty, "\n").unwrap();
    let err = generic::load(&empty, &generic_cfg(), LoadOptions::STRICT).unwrap_err();
    assert!(matches!(err, Error::Task { .. }), "{err}");
}

#[test]
fn wordnet_sample_define() {
    let task = wordnet::load_define(&data("wordnet"), LoadOptions::STRICT)
        .unwrap()
        .task;
    let rows: Vec<(&str, &str, &str, &str)> = task
        .examples
        .iter()
        .map(|e| {
            (
                e.id.as_str(),
                e.prompt.as_str(),
                e.target.as_str(),
                e.group.as_deref().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("n00001740", "entity (noun)", "that which is perceived or known or inferred to have its own distinct existence (living or nonliving)", "noun.Tops"),
            ("n02084071", "dog (noun)", "a member of the genus Canis (probably descended from the common wolf) that has been domesticated by man since prehistoric times; occurs in many breeds", "noun.animal"),
            ("v00001740", "breathe (verb)", "draw air into, and expel out of, the lungs", "verb.body"),
            ("a00001740", "able (adjective)", "(usually followed by `to') having the necessary means or skill or know-how or authority to do something", "adj.all"),
            ("s00002312", "abaxial (adjective)", "facing away from the axis of an organ or organism", "adj.all"),
            ("r00001740", "a cappella (adverb)", "without musical accompaniment", "adv.all"),
        ]
    );
}

#[test]
fn wordnet_sample_supersense() {
    let task = wordnet::load_supersense(&data("wordnet"), LoadOptions::STRICT)
        .unwrap()
        .task;
    assert_eq!(task.kind, TaskKind::MultipleChoice);
    let dog = &task.examples[1];
    assert_eq!(dog.answer, Some(5));
    assert_eq!(dog.target, "noun.animal");
    assert_eq!(dog.choices.as_deref().unwrap().len(), 45);
    assert!(dog.prompt.ends_with("\"the dog barked all night\""));
    // The label set is shared, not copied per example.
    let (a, b) = (
        task.examples[0].choices.as_ref().unwrap(),
        dog.choices.as_ref().unwrap(),
    );
    assert!(std::sync::Arc::ptr_eq(a, b));
}

#[test]
fn wordnet_missing_dir_says_how_to_install() {
    let err =
        wordnet::load_define(Path::new("/nonexistent/wordnet"), LoadOptions::STRICT).unwrap_err();
    assert!(
        err.to_string().contains("apt-get install wordnet-base"),
        "{err}"
    );
}

#[test]
fn wordnet_malformed_line() {
    let dir = tempfile::tempdir().unwrap();
    for file in wordnet::DATA_FILES {
        std::fs::copy(data("wordnet").join(file), dir.path().join(file)).unwrap();
    }
    let noun = dir.path().join("data.noun");
    let mut text = std::fs::read_to_string(&noun).unwrap();
    text.push_str("00009999 05 n 01 cat 0 000 no gloss bar\n");
    std::fs::write(&noun, text).unwrap();
    let err = wordnet::load_define(dir.path(), LoadOptions::STRICT).unwrap_err();
    assert!(
        err.to_string()
            .starts_with(&format!("{}:5:", noun.display())),
        "{err}"
    );
    let loaded = wordnet::load_define(dir.path(), LoadOptions::LENIENT).unwrap();
    assert_eq!((loaded.task.len(), loaded.n_skipped), (6, 1));
}

#[test]
fn wordnet_real_files_when_present() {
    let dir = Path::new(wordnet::DEFAULT_DIR);
    if !dir.join("data.noun").is_file() {
        eprintln!(
            "skipping: {} has no data.noun (apt-get install wordnet-base)",
            dir.display()
        );
        return;
    }
    let loaded = wordnet::load_supersense(dir, LoadOptions::STRICT).unwrap();
    assert_eq!(loaded.n_skipped, 0);
    // WordNet 3.0: 82,115 noun + 13,767 verb + 18,156 adjective + 3,621 adverb synsets.
    assert_eq!(loaded.task.len(), 117_659);
    let mut labels: Vec<&str> = loaded.task.groups().into_iter().flatten().collect();
    labels.sort();
    labels.dedup();
    assert_eq!(labels.len(), 45);
    let define = wordnet::load_define(dir, LoadOptions::STRICT).unwrap().task;
    let dog = define
        .examples
        .iter()
        .find(|e| e.id == "n02084071")
        .unwrap();
    assert_eq!(dog.prompt, "dog (noun)");
    assert_eq!(dog.group.as_deref(), Some("noun.animal"));
}
