"""``arvid serve``: real-time streaming of generated video over WebRTC, prompts switched live.

- :mod:`arvid.serve.app`: the aiohttp routes (page, offer, ``/health``, ``/metrics``), sessions, the paced track;
- :mod:`arvid.serve.worker`: the warm-up and each session's DiT and decode threads with the bounded frame buffer
  (the generator is built by the command, :func:`arvid.commands.serve.build_generator`, the one place it is built);
- :mod:`arvid.serve.control`: the ``parameters`` data channel's messages (Daydream Scope's) and prompt blends;
- :mod:`arvid.serve.metrics`: the Prometheus metrics; :mod:`arvid.serve.client`: the aiortc client
  (tests, ``arvid serve-bench``).

It needs the ``serve`` extra (aiortc, aiohttp, prometheus-client), imported where used with the install hint.
"""
