"""The management interface: OpenSIPS's JSON-RPC over HTTP (``http``), the command handlers
(``commands``, through the ``DialogOps`` facade), dlg_list formatting (``format``), and the
``sipdlg mi`` client (``client``)."""
