"""The EMA teacher of every teacher-student objective. A method *declares* its momentum pairs: which
parts of the student encoder the teacher holds its own averaged copy of (the others it shares), which
of the method's own heads it averages too (DINO's projection head, BYOL's projector), and which
parameter prefixes it copies instead of averaging. The average steps once per real optimiser update,
with the decay its schedule gives that step."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from multissl.core.adapter import PARTS
from multissl.core.ema import EMA, EMAConfig, annealed_decay
from multissl.core.encoder import eval_mode, extend_padding


class Teacher(nn.ModuleDict):
    """Averaged copies of the student modules it is given by name (encoder parts and heads; fp32, never
    trained); ``copied`` prefixes are copied each step instead. Its state dict is ``{name}.{parameter}``,
    as the student's."""

    def __init__(self, modules: dict[str, nn.Module], copied: Sequence[str] = ()):
        super().__init__({name: copy.deepcopy(m) for name, m in modules.items()})
        self.requires_grad_(False)
        self.copied = tuple(copied)
        self._ema: EMA | None = None  # built at the first step: the student may be moved or sharded first

    def part(self, name: str, student: nn.Module) -> nn.Module:
        """The teacher's own copy of part ``name``, or the student's when it is shared."""
        return self[name] if name in self else getattr(student, name)

    def shared(self, student: nn.Module) -> list[nn.Module]:
        """The student's parts the teacher uses as they are."""
        return [getattr(student, p) for p in PARTS if p not in self]

    @torch.no_grad()
    def reset(self, student: dict[str, nn.Module]) -> None:
        """Make the teacher an exact copy of the ``student`` modules it averages (after loading weights)."""
        for name, module in self.items():
            module.load_state_dict(student[name].state_dict())
        self._ema = None

    def average(self, student: dict[str, nn.Module], decay: float) -> None:
        """teacher <- decay * teacher + (1 - decay) * student, over the tensors it holds."""
        if self._ema is None:
            view = nn.ModuleDict({n: student[n] for n in self})  # a view, not registered
            self._ema = EMA([(view, self)], copied=self.copied)
        self._ema.step(decay)

    def merged(self, encoder: nn.Module) -> nn.Module:
        """A stand-alone copy of ``encoder`` with the teacher's weights (shared parts from the student)."""
        out = copy.deepcopy(encoder)
        for name in PARTS:
            if name in self:
                getattr(out, name).load_state_dict(self[name].state_dict())
        return out


class TeacherStudent(nn.Module):
    """What an objective with an EMA teacher shares: the teacher of ``self.encoder``, its decay
    schedule, and the count of updates. Objectives without a teacher leave ``teacher`` None, and the
    EMA step does nothing for them.

    ``teacher_init_share`` is the product of the decays so far: the share of each averaged teacher
    weight that is still its value at the start (the random init, or the imported weights)."""

    def __init__(self) -> None:
        super().__init__()
        self.teacher: Teacher | None = None

    def init_teacher(self, parts: Sequence[str], copied: Sequence[str], schedule: EMAConfig, run_steps: int,
                     heads: Sequence[str] = ()) -> None:
        """Declare the momentum pairs: the teacher averages ``parts`` of ``self.encoder`` and the
        method's own modules named in ``heads`` (attributes of the method, e.g. ``"head"``)."""
        self.teacher_heads = tuple(heads)
        self.teacher = Teacher(self._momentum_students(parts), copied)
        self.schedule, self.run_steps = schedule, run_steps
        self.register_buffer("ema_updates", torch.zeros((), dtype=torch.long))
        self.register_buffer("teacher_init_share", torch.ones((), dtype=torch.float32))

    def train(self, mode: bool = True) -> TeacherStudent:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def _momentum_students(self, parts: Sequence[str]) -> dict[str, nn.Module]:
        """The student module of each momentum pair, by the teacher's name for it."""
        heads = getattr(self, "teacher_heads", ())
        return {**{p: getattr(self.encoder, p) for p in parts}, **{h: getattr(self, h) for h in heads}}

    def reset_teacher(self) -> None:
        if self.teacher is not None:
            self.teacher.reset(self._momentum_students([p for p in PARTS if p in self.teacher]))

    def ema_step(self, step: int | None = None) -> float:
        """One EMA update with the decay scheduled for optimiser step ``step`` (0-based; default: the
        count of EMA updates so far); call it after each real optimiser update. NaN without a teacher."""
        if self.teacher is None:
            return float("nan")
        decay = annealed_decay(int(self.ema_updates) if step is None else step, self.schedule, self.run_steps)
        self.teacher.average(self._momentum_students([p for p in PARTS if p in self.teacher]), decay)
        self.ema_updates += 1
        if decay < 1.0:
            self.teacher_init_share *= decay
        return decay

    @torch.no_grad()
    def teacher_encode(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The teacher encoder's output on ``inputs`` (the final norm applied; extra tokens first) and
        its padding mask (B, E + T). Parts the teacher shares with the student run in eval mode."""
        teacher, enc = self.teacher, self.encoder
        if teacher is None:
            raise ValueError("this objective has no teacher")
        with eval_mode(*teacher.shared(enc)):
            feats, pad = teacher.part("local", enc)(inputs)
            x = teacher.part("context", enc)(feats, pad)
            pad = extend_padding(pad, enc.num_extra)
            x, _, _ = teacher.part("blocks", enc)(x, pad)
            return teacher.part("norm", enc)(x), pad

    def teacher_encoder(self) -> nn.Module:
        """A stand-alone encoder with the teacher's weights (the student's, without a teacher)."""
        if self.teacher is None:
            raise ValueError("this objective has no teacher: export the student")
        return self.teacher.merged(self.encoder)

    def compile_blocks(self) -> None:
        """``torch.compile`` every transformer block, the student's and the teacher's (in place: the
        state dict keeps its names)."""
        teacher_blocks = self.teacher["blocks"] if self.teacher is not None and "blocks" in self.teacher else []
        for blocks in (self.encoder.blocks, teacher_blocks):
            for block in blocks:
                block.compile(dynamic=True)
