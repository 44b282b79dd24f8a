"""The bus and its peers: ZeroMQ (:mod:`.zmq`), AMQP (:mod:`.amqp`), datagrepper
(:mod:`.datagrepper`), fedmsg signatures (:mod:`.signatures`).  Each decodes what
it receives and hands it to a :class:`listener.core.intake.Intake`.
"""
