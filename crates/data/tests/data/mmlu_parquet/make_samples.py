"""Writes the MMLU parquet samples of crates/data/tests/loaders.rs.

The files are laid out and typed like the Hugging Face dataset `cais/mmlu`
(`all/test-00000-of-00001.parquet`, `<subject>/test-00000-of-00001.parquet`;
columns question: string, subject: string, choices: list<string>,
answer: int64) and written with pyarrow's default writer (snappy), as HF does.
`csv/` holds the same questions in the original per-subject CSV release's form,
so the tests can check that both loaders agree. `bad/` holds broken files.

Run from anywhere: python3 make_samples.py (needs pyarrow).
"""

import csv
import os

import pyarrow as pa
import pyarrow.parquet as pq

HERE = os.path.dirname(os.path.abspath(__file__))

ROWS = [
    ("anatomy", "What is the embryological origin of the hyoid bone?",
     ["The first pharyngeal arch", "The first and second pharyngeal arches",
      "The second pharyngeal arch", "The second and third pharyngeal arches"], 3),
    ("anatomy", "Which nerve innervates the muscles of facial expression (les muscles peauciers)?",
     ["Trigeminal nerve", "Facial nerve", "Vagus nerve", "Hypoglossal nerve"], 1),
    ("anatomy", "Wie groß ist ein rotes Blutkörperchen? 赤血球の大きさは？",
     ["≈ 7.5 µm", "≈ 75 µm", "≈ 0.75 µm", "≈ 750 Å"], 0),
    ("astronomy", "What is the closest star to the Sun?",
     ["Sirius", "Alpha Centauri A", "Proxima Centauri", "Barnard's Star"], 2),
    ("astronomy", "How long does light from the Sun take to reach Earth?",
     ["About 8 seconds", "About 8 minutes", "About 8 hours", "About 8 days"], 1),
    # Last of its subject, so the CSV's line numbers (ids) still equal row numbers.
    ("astronomy", 'Which is true of "quoted", multi-line\ntext, says Ångström?',
     ["One,\ntwo", 'Say "hi"', "Three, four", "Comète"], 0),
]

SCHEMA = pa.schema([
    ("question", pa.string()),
    ("subject", pa.string()),
    ("choices", pa.list_(pa.string())),
    ("answer", pa.int64()),
])


def table(rows, schema=SCHEMA):
    return pa.Table.from_pylist(
        [{"question": q, "subject": s, "choices": c, "answer": a} for s, q, c, a in rows],
        schema=schema,
    )


def write(rel, tbl):
    path = os.path.join(HERE, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pq.write_table(tbl, path)  # pyarrow defaults: snappy, as HF writes


def main():
    write("all/test-00000-of-00001.parquet", table(ROWS))
    for subject in sorted({r[0] for r in ROWS}):
        rows = [r for r in ROWS if r[0] == subject]
        # astronomy in two row groups, as large HF files are.
        path = os.path.join(HERE, f"{subject}/test-00000-of-00001.parquet")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        pq.write_table(table(rows), path, row_group_size=2 if subject == "astronomy" else None)
        os.makedirs(os.path.join(HERE, "csv"), exist_ok=True)
        with open(os.path.join(HERE, "csv", f"{subject}_test.csv"), "w", newline="",
                  encoding="utf-8") as f:
            out = csv.writer(f, lineterminator="\n")
            for _, q, c, a in rows:
                out.writerow([q, *c, "ABCD"[a]])

    # HF shards a large split; anatomy straddles the two shards here.
    write("sharded/test-00000-of-00002.parquet", table(ROWS[:2]))
    write("sharded/test-00001-of-00002.parquet", table(ROWS[2:]))

    # Rows 2..4 are malformed (answer out of range, no choices, null question).
    write("bad/malformed_rows.parquet", table([
        ROWS[0],
        ("anatomy", "Answer out of range?", ["a", "b", "c", "d"], 4),
        ("anatomy", "No choices?", [], 0),
        ("anatomy", None, ["a", "b", "c", "d"], 0),
        ROWS[1],
    ]))
    write("bad/no_choices.parquet", table([("anatomy", "No choices?", [], 0)]))
    write("bad/null_question.parquet", table([("anatomy", None, ["a", "b"], 0)]))
    # A codec the loader is built without (only snappy and uncompressed are read).
    pq.write_table(table(ROWS[:2]), os.path.join(HERE, "bad/zstd.parquet"), compression="zstd")
    # No `answer` column.
    write("bad/missing_answer.parquet", table(ROWS[:2]).drop_columns(["answer"]))
    # `answer` as the letter, not the index.
    write("bad/answer_letter.parquet", pa.Table.from_pylist(
        [{"question": q, "subject": s, "choices": c, "answer": "ABCD"[a]} for s, q, c, a in ROWS[:2]],
        schema=SCHEMA.set(3, pa.field("answer", pa.string())),
    ))


if __name__ == "__main__":
    main()
