"""The fedmsg config used when no ``fedmsg.d`` is found (a fedmsg config file).

fedmsg-wallboard looks for fedmsg's configuration in ``--fedmsg-config``,
``$FEDMSG_CONFIG``, then fedmsg's own places (``./fedmsg.d``, ``/etc/fedmsg.d``).
An installed copy run elsewhere may find none; it then loads this file, so offline
commands (``longtail --input``, ``snapshot``) and ``listen --endpoint`` work.  Its
``endpoints`` is empty on purpose: give ``--endpoint`` or ``endpoints`` in the TOML.
"""

config = dict(
    topic_prefix="org.fedoraproject",
    environment="prod",
    endpoints={},
    validate_signatures=False,
    high_water_mark=0,
)
