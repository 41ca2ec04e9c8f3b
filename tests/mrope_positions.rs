//! Qwen2-VL's multimodal rotary positions against transformers' `get_rope_index` on the
//! reference prompts (tests/fixtures/reference/tiny_qwen2_vl.json): zero, one and two
//! images, an image after earlier turns, and a smaller pixel bound.

use serde_json::Value;
use sluice::model::mrope::mrope_positions;

#[test]
fn positions_equal_transformers_get_rope_index() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/reference/tiny_qwen2_vl.json");
    let reference: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let image_token = 2050; // <|image_pad|> in the fixture's tokenizer
    let cases = reference["generate"].as_array().unwrap();
    assert_eq!(cases.len(), 5);
    for case in cases {
        let id = case["id"].as_str().unwrap();
        let ids: Vec<u32> = case["prompt_token_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        let grids: Vec<[usize; 3]> = case["image_grid_thw"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| std::array::from_fn(|k| g[k].as_u64().unwrap() as usize))
            .collect();
        let got = mrope_positions(&ids, image_token, &grids, 2).unwrap_or_else(|e| panic!("{id}: {e}"));
        for axis in 0..3 {
            let want: Vec<i64> = case["mrope_positions"][axis].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
            assert_eq!(got.positions[axis], want, "{id}: axis {axis}");
        }
        assert_eq!(got.delta, case["mrope_delta"].as_i64().unwrap(), "{id}: delta");
    }
}
