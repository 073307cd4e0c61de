"""Operating a Cargohold server from its host: database schema commands (:mod:`.dbcommands`), backups
(:mod:`.backup`), and admin-credential recovery (:mod:`.recovery`). These need the ``server`` extra."""
