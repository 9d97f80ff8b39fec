"""Calcium dynamics of a single astrocyte.

Biophysical models ([`astroformer.calcium.GChI`][], [`astroformer.calcium.LiRinzel`][]),
the paper's abstract astrocyte ([`astroformer.calcium.DiffusiveProcesses`][]), all behind
[`astroformer.calcium.AbstractCalciumModel`][], and a standalone diffrax simulator
([`astroformer.calcium.simulate`][]) with the pulse-train drive of the reference
protocol ([`astroformer.calcium.pulse_train`][]).
"""

from ._base import AbstractCalciumModel as AbstractCalciumModel
from ._diffusive import DiffusiveProcesses as DiffusiveProcesses
from ._drive import PulseTrain as PulseTrain, pulse_train as pulse_train
from ._gchi import GChI as GChI
from ._li_rinzel import LiRinzel as LiRinzel
from ._simulate import (
    default_stepsize_controller as default_stepsize_controller,
    simulate as simulate,
)
