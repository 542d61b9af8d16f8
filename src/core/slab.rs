//! The slab behind a shard's connections and channels.

/// A slab with a generation per slot, so a completion for a connection that
/// has since been replaced in the same slot is recognised and ignored.
///
/// Entries live in fixed-size chunks that never move: growing never copies
/// (a `Vec` of a million connections would copy ~170 MB inside the event
/// loop when it doubles) and never holds up to twice the memory it uses.
pub struct Slab<T> {
    chunks: Vec<Vec<SlabEntry<T>>>,
    free: Vec<u32>,
    len: usize,
}

const CHUNK: usize = 1024;

struct SlabEntry<T> {
    generation: u32,
    value: Option<T>,
}

impl<T> Slab<T> {
    pub fn new() -> Self {
        Slab {
            chunks: Vec::new(),
            free: Vec::new(),
            len: 0,
        }
    }

    /// Slots ever handed out (occupied or free).
    fn capacity_used(&self) -> usize {
        self.chunks
            .last()
            .map_or(0, |c| (self.chunks.len() - 1) * CHUNK + c.len())
    }

    fn entry(&self, slot: u32) -> Option<&SlabEntry<T>> {
        let slot = slot as usize;
        self.chunks.get(slot / CHUNK)?.get(slot % CHUNK)
    }

    fn entry_mut(&mut self, slot: u32) -> Option<&mut SlabEntry<T>> {
        let slot = slot as usize;
        self.chunks.get_mut(slot / CHUNK)?.get_mut(slot % CHUNK)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The slot and generation the next insert will use.
    pub fn next_key(&self) -> (u32, u32) {
        match self.free.last() {
            Some(&slot) => (slot, self.entry(slot).map_or(0, |e| e.generation)),
            None => (self.capacity_used() as u32, 0),
        }
    }

    pub fn insert(&mut self, value: T) -> u32 {
        self.len += 1;
        if let Some(slot) = self.free.pop()
            && let Some(entry) = self.entry_mut(slot)
        {
            entry.value = Some(value);
            return slot;
        }
        let slot = self.capacity_used();
        if self.chunks.last().is_none_or(|c| c.len() == CHUNK) {
            self.chunks.push(Vec::with_capacity(CHUNK));
        }
        if let Some(chunk) = self.chunks.last_mut() {
            chunk.push(SlabEntry {
                generation: 0,
                value: Some(value),
            });
        }
        slot as u32
    }

    pub fn get_mut(&mut self, slot: u32) -> Option<&mut T> {
        self.entry_mut(slot)?.value.as_mut()
    }

    pub fn get(&self, slot: u32) -> Option<&T> {
        self.entry(slot)?.value.as_ref()
    }

    pub fn remove(&mut self, slot: u32) -> Option<T> {
        let entry = self.entry_mut(slot)?;
        let value = entry.value.take()?;
        entry.generation = entry.generation.wrapping_add(1);
        self.free.push(slot);
        self.len -= 1;
        Some(value)
    }

    /// Slots currently occupied.
    pub fn occupied(&self) -> impl Iterator<Item = u32> + '_ {
        self.chunks
            .iter()
            .flatten()
            .enumerate()
            .filter(|(_, e)| e.value.is_some())
            .map(|(i, _)| i as u32)
    }
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generations_change_on_reuse() {
        let mut s = Slab::new();
        let (slot, g0) = s.next_key();
        assert_eq!(s.insert("a"), slot);
        s.remove(slot);
        let (slot2, g1) = s.next_key();
        assert_eq!(slot2, slot);
        assert_ne!(g0, g1);
        s.insert("b");
        assert_eq!(s.len(), 1);
        assert_eq!(s.occupied().collect::<Vec<_>>(), vec![slot]);
    }

    #[test]
    fn grows_by_chunks_without_moving() {
        let mut s = Slab::new();
        for i in 0..(CHUNK * 2 + 5) {
            assert_eq!(s.insert(i) as usize, i);
        }
        let first = s.get(0).unwrap() as *const usize;
        for i in 0..CHUNK {
            s.insert(i);
        }
        assert_eq!(s.get(0).unwrap() as *const usize, first, "entries moved");
        assert_eq!(*s.get((CHUNK * 2 + 1) as u32).unwrap(), CHUNK * 2 + 1);
        assert_eq!(s.chunks.len(), 4);
        assert!(s.chunks.iter().all(|c| c.capacity() == CHUNK));
    }
}
