"""The commands' work without printing: sessions on a study, finding a study, the grid's state."""
