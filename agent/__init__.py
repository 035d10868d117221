"""The node side: protocol client, proxy drivers, `sentinel-agent` and the fleet simulator."""
