"""Everything that talks to the PACS over QIDO-RS, behind the ``QidoSource`` protocol."""
