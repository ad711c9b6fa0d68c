"""The optimizers: AdamW, or Muon for the blocks' matrices with AdamW for the rest, stepped as one."""
import torch

from lab.build import build
from lab.config import load
from lab.optim import Joint, Muon


def test_muon_takes_the_blocks_matrices_and_adamw_everything_else(root):
    b = build(load(f"{root}/configs/addition.yaml"))  # the default: Muon and QK-norm
    opt, _ = b.optimizer()
    assert isinstance(opt, Joint)
    adamw, muon = opt.optimizers
    names = {id(p): n for n, p in b.module.model.named_parameters()}
    in_muon = {names[id(p)] for g in muon.param_groups for p in g["params"]}
    in_adamw = {names[id(p)] for g in adamw.param_groups for p in g["params"]}
    assert not in_muon & in_adamw and in_muon | in_adamw == set(names.values())  # each parameter once
    assert in_muon == {n for n, p in b.module.model.named_parameters() if n.startswith("blocks.") and p.dim() == 2}
    assert {"wte.weight", "lm_head.weight", "blocks.0.attn.q_gain"} <= in_adamw
    assert [g["weight_decay"] for g in adamw.param_groups] == [b.cfg.train.weight_decay, 0.0]
    assert opt.param_groups == adamw.param_groups + muon.param_groups  # a scheduler scales all of them
    assert muon.param_groups[0]["ns_steps"] == b.cfg.train.muon_ns_steps == 5
    fewer, _ = build(load(f"{root}/configs/addition.yaml", ["train.muon_ns_steps=3"])).optimizer()
    assert fewer.optimizers[1].param_groups[0]["ns_steps"] == 3
    plain, _ = build(load(f"{root}/configs/addition.yaml", ["train.optimizer=adamw"])).optimizer()
    assert isinstance(plain, torch.optim.AdamW)


def test_the_float32_muon_step_is_torchs_step_up_to_its_bfloat16_rounding():
    torch.manual_seed(0)
    p0, grads = torch.randn(96, 32), [torch.randn(96, 32) for _ in range(3)]
    out = {}
    for cls in (Muon, torch.optim.Muon):
        p = torch.nn.Parameter(p0.clone())
        opt = cls([p], lr=0.05, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
        for g in grads:
            p.grad = g.clone()
            opt.step()
        out[cls] = p.detach() - p0
    ours, torchs = out[Muon], out[torch.optim.Muon]
    assert (ours - torchs).norm() < 0.02 * torchs.norm()  # bfloat16 carries ~3 significant digits
    assert not torch.equal(ours, torchs)  # (it is not torch's bfloat16 iteration run again)


def test_a_joint_optimizer_saves_and_restores_every_inner_state(root):
    cfg = load(f"{root}/configs/addition.yaml", ["train.optimizer=muon", "task.n_digits=3", "model.preset=gpt-nano"])
    b = build(cfg)
    opt, sched = b.optimizer()
    x = torch.from_numpy(b.task.train_batch(0, 16).x)
    b.module.step(x, opt, sched, 0)
    saved = opt.state_dict()
    fresh, _ = build(cfg).optimizer()
    fresh.load_state_dict(saved)
    for a, c in zip(opt.optimizers, fresh.optimizers, strict=True):
        assert a.state_dict()["param_groups"] == c.state_dict()["param_groups"]
        for s, t in zip(a.state_dict()["state"].values(), c.state_dict()["state"].values(), strict=True):
            assert all(torch.equal(s[k], t[k]) for k in s)
    assert len(opt.state) == sum(len(o.state) for o in opt.optimizers) > 0
