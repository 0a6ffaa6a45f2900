from latte_toolkit.pipelines.bench import *  # noqa: F401,F403  (moved; remove once the CLI imports pipelines.bench)
