"""The optimizers: the shared base, SASSHA, M-SASSHA and the authors' language-model
variant, with what they configure (schedule, bias correction) and hold (dispatch, plan)."""
