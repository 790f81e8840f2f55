//! Prompt rendering and batching with a tiny word-level tokenizer built in code.

use candle_core::Device;
use fluxmoe_data::batch::{collate, encode, make_batch, BatchConfig, Encoded};
use fluxmoe_data::prompt::{PromptFormat, Rendered, Template};
use fluxmoe_data::Example;

mod common;

use common::tiny_tokenizer;

fn rendered(prompt: &str, target: &str) -> Rendered {
    Rendered {
        prompt: prompt.into(),
        target: target.into(),
    }
}

fn cfg(max_len: usize, eos_id: Option<u32>) -> BatchConfig {
    BatchConfig {
        max_len,
        pad_id: 0,
        eos_id,
    }
}

#[test]
fn chatml_ids_and_masks() {
    let tok = tiny_tokenizer();
    let ex = Example::generation("x", "what is two plus two", "four", None);
    let r = Template::for_task("generic")
        .render(&ex, PromptFormat::ChatMl)
        .unwrap();
    let enc = encode(&tok, &r, &cfg(64, None)).unwrap();
    // <|im_start|> user what is two plus two <|im_end|> <|im_start|> assistant | four <|im_end|>
    assert_eq!(enc.ids, [2, 4, 6, 7, 8, 9, 8, 3, 2, 5, 10, 3]);
    assert_eq!(enc.loss_mask, [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1]);
}

#[test]
fn left_truncation_of_the_prompt_and_eos() {
    let tok = tiny_tokenizer();
    let r = rendered("what is two plus two", "four");
    let enc = encode(&tok, &r, &cfg(4, Some(11))).unwrap();
    // Target = four </s> (2 tokens), so 2 prompt tokens survive from the right.
    assert_eq!(enc.ids, [9, 8, 10, 11]);
    assert_eq!(enc.loss_mask, [0, 0, 1, 1]);
    // A target longer than max_len drops the prompt and keeps its head.
    let enc = encode(
        &tok,
        &rendered("what", "two plus two is four"),
        &cfg(3, None),
    )
    .unwrap();
    assert_eq!(enc.ids, [8, 9, 8]);
    assert_eq!(enc.loss_mask, [1, 1, 1]);
    // Unknown words map to [UNK].
    let enc = encode(&tok, &rendered("what zebra", ""), &cfg(8, None)).unwrap();
    assert_eq!(enc.ids, [6, 1]);
    assert!(encode(&tok, &r, &cfg(0, None)).is_err());
}

#[test]
fn batch_pads_right_to_the_longest() {
    let tok = tiny_tokenizer();
    let batch = make_batch(
        &tok,
        &[
            rendered("what is", "four"),
            rendered("two plus two is", "four"),
        ],
        &cfg(16, Some(11)),
        &Device::Cpu,
    )
    .unwrap();
    assert_eq!(batch.input_ids.dims(), [2, 6]);
    assert_eq!(batch.input_ids.dtype(), candle_core::DType::U32);
    assert_eq!(
        batch.input_ids.to_vec2::<u32>().unwrap(),
        [[6, 7, 10, 11, 0, 0], [8, 9, 8, 7, 10, 11]]
    );
    assert_eq!(
        batch.attention_mask.to_vec2::<u32>().unwrap(),
        [[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]]
    );
    assert_eq!(
        batch.loss_mask.to_vec2::<u32>().unwrap(),
        [[0, 0, 1, 1, 0, 0], [0, 0, 0, 0, 1, 1]]
    );
}

#[test]
fn collate_rejects_empty_input() {
    assert!(collate(&[], 0, &Device::Cpu).is_err());
    let empty = Encoded {
        ids: vec![],
        loss_mask: vec![],
    };
    assert!(collate(&[empty], 0, &Device::Cpu).is_err());
}
