"""The engine: what every CAM method is built on, and nothing that names a method.

A model is cut at a layer into ``body`` (x -> A) and ``head`` (A -> logits) (:mod:`.split`, the paper's
``f = F o f^[l]``); :func:`.cam_input.prepare` runs the body once and gives every method the same
:class:`~.cam_input.CamInput`; :mod:`.cam_map` draws the map ``s(u(ReLU(sum_k alpha_k A_k)))`` (Eqs. 1, 10).
Below the methods lie the head's mathematics: the rule table of head operations (:mod:`.head_ops`), the
DeepLIFT-Rescale and LRP-epsilon backward passes (:mod:`.propagation`), the factoring ``F = R o M o P`` that
makes channel coalitions cheap (:mod:`.head_factoring`), the channel game ``v(a') = F^c(h_A(a'))`` of
Secs. 3.2-3.3 (:mod:`.channel_game`), and SHAP-CAM's quadratic control variate (:mod:`.quadratic_control`).
Beside them, a classifier's output function (:mod:`.outputs`: softmax or sigmoid of the logits).
The engine imports nothing else of the package.
"""
