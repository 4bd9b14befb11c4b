"""A minimal Faust worker for the smoke test: upper-cases each value from one topic to another.

Run as ``python -m tests.integration.apps.echo worker``; topics and app id come from the env.
"""

import os

from connectors.settings import load_settings
from streams.app import create_app

app = create_app(load_settings(), app_id=os.environ["EZ_TEST_APP_ID"])
source = app.topic(os.environ["EZ_TEST_IN"], key_serializer="raw", value_serializer="raw")
sink = app.topic(os.environ["EZ_TEST_OUT"], key_serializer="raw", value_serializer="raw")


@app.agent(source)
async def echo(stream):
    async for key, value in stream.items():
        await sink.send(key=key, value=value.upper())


if __name__ == "__main__":
    app.main()
