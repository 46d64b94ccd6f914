"""The SIP side of the shell: the asyncio service that drives the engine, and its transports."""
