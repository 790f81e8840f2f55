//! `fluxmoe inspect`: architecture, layer and expert layout, parameter counts, memory.

use fluxmoe_model::config::{AttentionKind, Ffn};
use fluxmoe_model::source::Source;
use fluxmoe_model::stats::ModelStats;
use fluxmoe_model::LoadedModel;

pub fn report(lm: &LoadedModel) -> String {
    let ck = &lm.checkpoint;
    let cfg = &ck.config;
    let stats = ModelStats::of(cfg, &ck.params);
    let mut s = String::new();
    let attn = match &cfg.attention {
        AttentionKind::Standard { head_dim, qk_norm, qkv_bias, .. } => format!(
            "standard, {} heads / {} kv heads, head_dim {head_dim}, qkv bias {qkv_bias}, qk-norm {qk_norm:?}",
            cfg.num_heads, cfg.num_kv_heads
        ),
        AttentionKind::Mla { q_lora_rank, kv_lora_rank, qk_nope_head_dim, qk_rope_head_dim, v_head_dim } => format!(
            "multi-head latent, {} heads, kv_lora_rank {kv_lora_rank}, q_lora_rank {q_lora_rank:?}, \
             qk {qk_nope_head_dim}+{qk_rope_head_dim}, v {v_head_dim}",
            cfg.num_heads
        ),
    };
    match &lm.source {
        Source::Folder(p) => s += &format!("source            {} (safetensors)\n", p.display()),
        Source::Gguf { path, tensor_types } => {
            let mut counts = std::collections::BTreeMap::<&str, usize>::new();
            for t in tensor_types.values() {
                *counts.entry(t.as_str()).or_default() += 1;
            }
            let types: Vec<String> = counts.iter().map(|(t, n)| format!("{n} {t}")).collect();
            s += &format!(
                "source            {} (GGUF: {})\n",
                path.display(),
                types.join(", ")
            );
        }
    }
    s += &format!("architecture      {}\n", cfg.arch.model_type());
    s += &format!(
        "vocab / hidden    {} / {}\n",
        cfg.vocab_size, cfg.hidden_size
    );
    s += &format!(
        "layers            {} ({} MoE)\n",
        cfg.num_layers(),
        cfg.moe_layers().len()
    );
    s += &format!("attention         {attn}\n");
    s += &format!(
        "rope              theta {}, {}\n",
        cfg.rope_theta,
        if cfg.rope_interleaved {
            "interleaved"
        } else {
            "rotate-half"
        }
    );
    s += &format!("tied embeddings   {}\n", cfg.tie_word_embeddings);
    s += "layer layout:\n";
    // Consecutive layers with the same description are shown as one range.
    let mut rows: Vec<(usize, usize, String)> = Vec::new();
    for (l, (ffn, ls)) in cfg.layers.iter().zip(&stats.layers).enumerate() {
        let line = match ffn {
            Ffn::Dense { width } => format!("dense MLP, width {width}"),
            Ffn::Moe(m) => {
                let widths = if m.expert_widths.iter().all(|&w| w == m.expert_widths[0]) {
                    format!("width {}", m.expert_widths[0])
                } else {
                    format!("widths {:?}", m.expert_widths)
                };
                format!(
                    "MoE {} experts ({widths}), top-{}, {:?}, shared {:?}, {} expert params",
                    m.n_experts,
                    m.top_k,
                    m.scoring,
                    m.shared,
                    human(ls.expert_params)
                )
            }
        };
        match rows.last_mut() {
            Some((_, end, prev)) if *prev == line => *end = l,
            _ => rows.push((l, l, line)),
        }
    }
    for (start, end, line) in rows {
        let range = if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        };
        s += &format!("  {range:>7}  {line}\n");
    }
    s += &format!(
        "parameters        {} total, {} in routed experts\n",
        human(stats.total_params),
        human(stats.expert_params)
    );
    s += &format!("active per token  {}\n", human(stats.active_params));
    s += &format!(
        "memory, inference (f32 weights)              {}\n",
        bytes(stats.inference_bytes())
    );
    s += &format!(
        "memory, full fine-tuning (f32 + AdamW, no activations) {}\n",
        bytes(stats.full_finetune_bytes())
    );
    s
}

fn human(n: usize) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.2}B", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.2}M", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.1}K", n as f64 / 1e3),
        n => n.to_string(),
    }
}

fn bytes(n: usize) -> String {
    let gib = n as f64 / (1u64 << 30) as f64;
    if gib >= 1.0 {
        format!("{gib:.2} GiB")
    } else {
        format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64)
    }
}
