# fedmsg configuration for fedmsg-wallboard (fedmsg's own fedmsg.d/ convention).
#
# fedmsg loads every *.py file in this folder (and /etc/fedmsg.d/) and merges the
# ``config`` dicts.  fedmsg-wallboard reads these keys:
#
#   endpoints            {name: [zmq address, ...]}; the listener SUBscribes to all of them.
#   topic_prefix         e.g. "org.fedoraproject"; with environment, how fedmsg.meta
#   environment          processors recognise topics ("prod", "stg" or "dev").  The
#                        ZeroMQ subscription prefix is wallboard.toml's topic_prefix
#                        (or --topic-prefix); default: every topic.
#   validate_signatures  True to check fedmsg x509 signatures (needs ssldir / crl_location).
#   high_water_mark      fedmsg's value; 0 there means "libzmq default (1000)", so
#                        fedmsg-wallboard sets its own HWM explicitly (see wallboard.toml).
#
# Fedora retired its public ZeroMQ endpoint (tcp://hub.fedoraproject.org:9940);
# the demo publishes recorded real messages on a local endpoint instead.
config = dict(
    topic_prefix="org.fedoraproject",
    environment="prod",
    endpoints={
        "wallboard-replay": ["tcp://127.0.0.1:9940"],
    },
    validate_signatures=False,
    high_water_mark=0,
    # No fas_credentials / fasjson here: fedmsg-wallboard never lets
    # fedmsg_meta look users up over the network on the message path.
)
