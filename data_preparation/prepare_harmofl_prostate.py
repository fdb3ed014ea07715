"""HarmoFL's six-site prostate MRI (SAML) to 2.5-D slices and datalists. The code is
``medfl.federations.prostate_saml.preparation``; ``--help`` lists the options."""

import runpy

runpy.run_module("medfl.federations.prostate_saml.preparation", run_name="__main__")
