"""Sans-IO protocol cores: bytes in, events and bytes out, time as an argument; the services wrap them in asyncio."""
