//! Corpus loaders on small sample folders written in each source's exact layout
//! (`tests/data/corpora/<name>/`), and the held-out split on them.

use std::path::{Path, PathBuf};

use fluxmoe_data::corpora::{self, kjv, CorpusKind, CorpusSources, Domain};
use fluxmoe_data::{Error, LoadOptions};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/corpora")
}

fn docs(kind: CorpusKind) -> Vec<String> {
    let loaded = corpora::load(kind, &CorpusSources::under(root()), LoadOptions::STRICT).unwrap();
    assert_eq!(loaded.n_skipped, 0);
    assert_eq!(loaded.corpus.name, kind.name());
    loaded.corpus.documents
}

#[test]
fn sotu_reads_the_json_addresses_in_year_order() {
    let d = docs(CorpusKind::Sotu);
    assert_eq!(d.len(), 3, "the .txt twin and datapackage.json are ignored");
    assert!(d[0].ends_with("opportunity which now presents itself."));
    assert!(d[2].contains("sincere gratification"));
}

#[test]
fn moby_follows_the_file_list() {
    let d = docs(CorpusKind::Moby);
    assert_eq!(d.len(), 4);
    assert!(d[0].starts_with("ETYMOLOGY."));
    assert!(d[1].starts_with("Call me Ishmael."));
    assert!(d[3].contains("survive the wreck"));
}

#[test]
fn kjv_groups_verses_into_chapters() {
    let d = docs(CorpusKind::Kjv);
    assert_eq!(d.len(), 4);
    assert_eq!(
        d[0],
        "In the beginning God created the heaven and the earth. \
         And the earth was without form, and void; and darkness was upon the face of the deep."
    );
    assert_eq!(
        d[2],
        "Now there was a certain man of Ramathaimzophim, of mount Ephraim. And he had two wives."
    );
}

#[test]
fn kjv_malformed_line_names_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(kjv::FILE);
    std::fs::write(&path, "Ge1:1 In the beginning.\nnot a verse\nGe1:2 And.\n").unwrap();
    let err = kjv::load(&path, LoadOptions::STRICT).unwrap_err();
    assert!(
        err.to_string()
            .starts_with(&format!("{}:2: ", path.display())),
        "{err}"
    );
    let loaded = kjv::load(&path, LoadOptions::LENIENT).unwrap();
    assert_eq!(loaded.n_skipped, 1);
    assert_eq!(loaded.corpus.documents, ["In the beginning. And."]);
}

#[test]
fn fortunes_reads_every_file_without_extension() {
    let d = docs(CorpusKind::Fortunes);
    assert_eq!(d.len(), 5, "{d:?}");
    assert!(d[1].ends_with("\twith brightly colored machine tools."));
    assert_eq!(
        d[4],
        "100% of the shots you don't take don't go in.\n\t\t-- Wayne Gretzky"
    );
}

#[test]
fn wordnet_glosses_with_their_words() {
    let d = docs(CorpusKind::Wordnet);
    assert_eq!(d.len(), 4);
    assert_eq!(
        d[1],
        "physical entity (noun): an entity that has physical existence"
    );
    assert!(d[2].starts_with("breathe, take a breath, respire, suspire (verb): draw air"));
    assert!(d[3].starts_with("abaxial, dorsal (adjective): facing away"));
}

#[test]
fn math_question_then_answer() {
    let d = docs(CorpusKind::Math);
    assert_eq!(d.len(), 4);
    assert_eq!(d[0], "Total of 502 and 15.\n517");
}

#[test]
fn wordnet_is_labelled_by_part_of_speech_and_math_by_area() {
    let load = |kind| {
        corpora::load(kind, &CorpusSources::under(root()), LoadOptions::STRICT)
            .unwrap()
            .corpus
    };
    let wordnet = load(CorpusKind::Wordnet);
    assert_eq!(
        wordnet.labels.as_deref().unwrap(),
        ["noun", "noun", "verb", "adjective"]
    );
    // Documents 1 and 3 are held out (every 2nd); the slice keeps its own of each side.
    let slice = Domain::parse("wordnet:verb+adjective")
        .unwrap()
        .split(&wordnet, 2)
        .unwrap();
    assert_eq!(slice.train.name, "wordnet:verb+adjective");
    assert_eq!(slice.train.documents.len(), 1);
    assert!(slice.train.documents[0].starts_with("breathe"));
    assert_eq!(slice.held_out.documents.len(), 1);
    assert!(slice.held_out.documents[0].starts_with("abaxial"));
    let math = load(CorpusKind::Math);
    assert_eq!(math.label_names(), ["arithmetic"]);
    let err = Domain::parse("math:algebra")
        .unwrap()
        .split(&math, 2)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no document is labelled `algebra`; its labels are arithmetic"),
        "{err}"
    );
    assert_eq!(load(CorpusKind::Kjv).labels, None);
}

#[test]
fn held_out_split_of_a_real_layout_is_stable() {
    let loaded = corpora::load(
        CorpusKind::Moby,
        &CorpusSources::under(root()),
        LoadOptions::STRICT,
    )
    .unwrap();
    let split = loaded.corpus.split(2).unwrap();
    assert_eq!(split.held_out.documents.len(), 2);
    assert!(split.held_out.documents[0].starts_with("Call me Ishmael."));
    assert_eq!(split, loaded.corpus.split(2).unwrap());
}

#[test]
fn missing_folder_says_how_to_fetch() {
    let err = corpora::load(
        CorpusKind::Sotu,
        &CorpusSources::under("/nonexistent/corpora"),
        LoadOptions::STRICT,
    )
    .unwrap_err();
    assert!(matches!(err, Error::Format { .. }));
    assert!(
        err.to_string().contains("fluxmoe assets fetch-corpora"),
        "{err}"
    );
}
