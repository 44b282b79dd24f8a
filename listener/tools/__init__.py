"""The commands beside the two daemons, one module each: ``snapshot``,
``check-config``, ``radar``/``diff``, ``gource``, ``replay``, ``amqp-replay``,
``longtail`` (the study), and the demo.
"""
