import pytest
import torch
from torch.nn import functional as F

from subnet_ray.models.classifier import HeadMask, head_parameter_masks, load_checkpoint, save_checkpoint
from tiny import tiny_batch, tiny_model


def logits(model, batch):
    return model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_all_ones_mask_is_exactly_unmasked(attn):
    model = tiny_model()
    model.encoder.config._attn_implementation = attn
    batch = tiny_batch()
    ref = logits(model, batch)
    with HeadMask(model, torch.ones(2, 4)):
        assert torch.equal(logits(model, batch), ref)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_disabled_head_equals_zeroed_value_slice(attn):
    model = tiny_model()
    model.encoder.config._attn_implementation = attn
    batch = tiny_batch()
    mask = torch.ones(2, 4)
    mask[1, 2] = 0
    with HeadMask(model, mask):
        masked = logits(model, batch)
    zeroed = tiny_model()
    zeroed.encoder.config._attn_implementation = attn
    v = zeroed.attention_layers()[1].self.value
    with torch.no_grad():
        v.weight[16:24] = 0
        v.bias[16:24] = 0
    torch.testing.assert_close(masked, logits(zeroed, batch), rtol=0, atol=1e-6)
    assert not torch.allclose(masked, logits(tiny_model(), batch))


def test_per_example_mask_equals_masking_each_example():
    model = tiny_model()
    batch = tiny_batch(n=3)
    masks = torch.ones(3, 2, 4)
    masks[0, 0, 1] = 0
    masks[2, 1, :3] = 0
    with HeadMask(model, masks) as hm:
        together = logits(model, batch)
        for i in range(3):
            hm.set(masks[i])
            one = {k: v[i : i + 1] for k, v in batch.items()}
            torch.testing.assert_close(together[i : i + 1], logits(model, one), rtol=1e-5, atol=1e-6)


def test_importance_gradient_matches_finite_differences():
    model = tiny_model().double()
    batch = tiny_batch()
    mask = torch.ones(2, 4, dtype=torch.float64, requires_grad=True)

    def loss_at(m):
        with HeadMask(model, m):
            return F.cross_entropy(logits(model, batch), batch["labels"])

    (grad,) = torch.autograd.grad(loss_at(mask), mask)
    eps = 1e-6
    for layer in range(2):
        for head in range(4):
            e = torch.zeros(2, 4, dtype=torch.float64)
            e[layer, head] = eps
            with torch.no_grad():
                fd = (loss_at(mask + e) - loss_at(mask - e)) / (2 * eps)
            assert abs(fd.item() - grad[layer, head].item()) < 1e-7


def test_wrong_mask_shape_is_rejected_naming_shapes():
    model = tiny_model()
    with pytest.raises(ValueError, match=r"\(3, 4\).*\(2, 4\)"):
        HeadMask(model, torch.ones(3, 4))


def test_head_parameter_masks_cover_exactly_the_head_slices():
    model = tiny_model()
    mask = torch.ones(2, 4)
    mask[0, 3] = 0
    pm = head_parameter_masks(model, mask)
    attn = model.attention_layers()[0]
    by_param = {id(p): m for p, m in pm}
    q = torch.ones_like(attn.self.query.weight) * by_param[id(attn.self.query.weight)]
    assert q[24:].sum() == 0 and q[:24].eq(1).all()
    o = torch.ones_like(attn.output.dense.weight) * by_param[id(attn.output.dense.weight)]
    assert o[:, 24:].sum() == 0 and o[:, :24].eq(1).all()
    assert len(pm) == 2 * 7  # q,k,v weight+bias and the output weight, per layer


def test_checkpoint_round_trip_and_mismatch(tmp_path):
    model = tiny_model(seed=1)
    save_checkpoint(model, tmp_path / "c", {"epoch": 1})
    other = tiny_model(seed=2)
    assert load_checkpoint(other, tmp_path / "c") == {"epoch": 1}
    for a, b in zip(model.state_dict().values(), other.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="does not match the model"):
        load_checkpoint(tiny_model(num_labels=3), tmp_path / "c")
